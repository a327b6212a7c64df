"""Continuous batching: requests decoded together give exactly what they give alone (greedy, fp32 on
CPU); a cancelled stream leaves the others untouched; one request's error stays its own."""

from __future__ import annotations

import threading

import pytest
import torch

from fusionrag_integrations import ChunkNotFoundError
from fusionrag_integrations.runtime.prefill_task import PrefillTask
from tests.conftest import DOCS, engine_on, rag_messages

QUESTIONS = [
    "What is the password for the archive room?",
    "Who founded the Varn Institute?",
    "Where is Kellersby?",
    "What colour is the lighthouse?",
    "When does the fish market open?",
    "Who did Amelia Varn meet?",
    "What did they measure?",
    "What is not allowed in the reading room?",
]


def requests() -> list[tuple[list[dict], dict]]:
    """8 different requests: chunk sets, lengths, selectors, stop strings."""
    out = []
    for i, question in enumerate(QUESTIONS):
        docs = DOCS[i % 2 : i % 2 + 2 + i % 3]
        settings = dict(max_new_tokens=12 + 5 * i, selector=["fusionrag", "epic", "none", "full"][i % 4])
        if i % 3 == 2:
            settings["stop"] = ["."]
        out.append((rag_messages(docs, question), settings))
    return out


@pytest.fixture
def engines(smol_engine, tmp_path):
    alone = engine_on(smol_engine.loaded, tmp_path / "c")
    batched = engine_on(smol_engine.loaded, tmp_path / "c", max_running_requests=8, mixed_steps=True)
    alone.precompute(DOCS)
    return alone, batched


_ALONE: dict[str, object] = {}


def each_alone(alone, work) -> list:
    """Each request's answer from the engine that serves one at a time (greedy, so each is computed once
    per module: several tests compare against the same requests)."""
    for prompt, settings in work:
        key = repr((prompt, sorted(settings.items())))
        if key not in _ALONE:
            _ALONE[key] = alone.generate(prompt, **settings)
    return [_ALONE[repr((p, sorted(s.items())))] for p, s in work]


def run_concurrently(engine, work) -> list:
    results: list = [None] * len(work)

    def run(i: int) -> None:
        prompt, settings = work[i]
        try:
            results[i] = engine.generate(prompt, **settings)
        except Exception as exc:  # noqa: BLE001 - compared by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_eight_concurrent_requests_equal_each_alone(engines):
    alone, batched = engines
    work = requests()
    reference = each_alone(alone, work)
    together = run_concurrently(batched, work)
    for ref, got in zip(reference, together, strict=True):
        assert got.token_ids == ref.token_ids and got.text == ref.text and got.finish_reason == ref.finish_reason
        assert got.stats.tokens_recomputed == ref.stats.tokens_recomputed
    scheduler = batched.scheduler
    assert scheduler.batched_rows > 2 * scheduler.steps  # decoded together, not in turns
    assert not scheduler.running and not scheduler.waiting
    assert batched.counters["mixed_steps"] > 0  # prefill slices rode with decode rows (EngineConfig.mixed_steps)
    assert not batched.counters["mixed_step_fallbacks"]


def test_a_failed_mixed_step_runs_its_parts_apart(engines, monkeypatch):
    """A mixed forward that fails (out of memory, say) leaves nothing changed: the slices and the decode
    rows run apart, and every answer is still the one it gives alone."""
    from fusionrag_integrations.runtime import executor

    def fail(*args, **kwargs):
        raise torch.OutOfMemoryError("the mixed forward's activations")

    monkeypatch.setattr(executor, "packed_step", fail)
    alone, batched = engines
    work = requests()[:4]
    reference = each_alone(alone, work)
    together = run_concurrently(batched, work)
    assert [g.token_ids for g in together] == [r.token_ids for r in reference]
    assert batched.counters["mixed_step_fallbacks"] > 0 and not batched.counters["mixed_steps"]


def test_a_cancelled_stream_does_not_disturb_the_others(engines):
    alone, batched = engines
    work = requests()[:3]
    reference = each_alone(alone, [(p, {**s, "stop": None}) for p, s in work])
    dropped = batched.stream(work[0][0], max_new_tokens=40)
    first = [next(dropped), next(dropped)]
    others = run_concurrently(batched, [(p, {**s, "stop": None}) for p, s in work[1:]])
    dropped.close()
    assert all(piece.finish_reason is None for piece in first)
    assert [o.token_ids for o in others] == [r.token_ids for r in reference[1:]]
    batched.generate("Hello", max_new_tokens=2)  # the scheduler runs on: the cancelled slot was freed
    assert not batched.scheduler.running


def test_one_requests_error_stays_its_own(engines):
    _, batched = engines
    work = requests()[:3]
    work[1] = (work[1][0], {**work[1][1], "chunks": ["a chunk that is nowhere in the prompt, long enough"]})
    results = run_concurrently(batched, work)
    assert isinstance(results[1], ChunkNotFoundError)
    assert all(not isinstance(r, Exception) and r.token_ids for r in (results[0], results[2]))


def test_chain_batch_is_served_in_one_schedule(engines):
    from fusionrag_integrations.langchain import ChatFusionRAG

    alone, batched = engines
    prompts = [[("human", m[1]["content"])] for m, _ in requests()[:4]]
    sequential = [ChatFusionRAG(engine=alone, max_tokens=10).invoke(p).content for p in prompts]
    batched.scheduler.steps = batched.scheduler.batched_rows = 0
    together = ChatFusionRAG(engine=batched, max_tokens=10).batch(prompts)
    assert [m.content for m in together] == sequential
    assert batched.scheduler.batched_rows > batched.scheduler.steps


def test_a_request_that_does_not_fit_the_kv_budget_waits(smol_engine, tmp_path):
    alone = engine_on(smol_engine.loaded, tmp_path / "c", max_running_requests=1)
    alone.precompute(DOCS)
    c = smol_engine.model.config
    per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4  # fp32
    work = requests()[:4]
    # room for the largest request's KV, not for two: the others wait, then run, and nothing fails
    need = max(len(alone.prefill(p).token_ids) + s["max_new_tokens"] for p, s in work)
    budget = (need + 10) * per_token
    tight = engine_on(smol_engine.loaded, tmp_path / "c", max_running_requests=8, running_kv_bytes=budget)
    together = run_concurrently(tight, work)
    assert [r.token_ids for r in together] == [r.token_ids for r in each_alone(alone, work)]
    assert tight.scheduler.peak_running == 1


def test_long_prefills_run_in_pieces_between_decode_steps(engines, smol_engine, tmp_path, monkeypatch):
    """max_prefill_tokens=32: every prompt (and every full/fused recompute) runs in slices of at most 32
    positions a step, the running requests decoding between them; answers stay those of each alone."""
    alone, _ = engines
    paced = engine_on(smol_engine.loaded, tmp_path / "c", max_running_requests=8, max_prefill_tokens=32)
    work = requests()[:6] + [("A plain prompt without any chunk, long enough to be split. " * 4, {"max_new_tokens": 8})]
    reference = [r.token_ids for r in each_alone(alone, work)]
    slices = []
    next_slice = PrefillTask.next_slice

    def spy(task, budget):  # every slice, alone or in a mixed step
        piece = next_slice(task, budget)
        slices.append(piece.end - task.done)
        return piece

    monkeypatch.setattr(PrefillTask, "next_slice", spy)
    together = run_concurrently(paced, work)
    assert [r.token_ids for r in together] == reference
    assert len(slices) > 2 * len(work) and max(slices) <= 32  # prompts of 100+ tokens: several slices each


def test_a_long_prompt_does_not_freeze_a_running_stream_by_default_on_cpu(engines):
    """With the default settings a 1,200-token prompt is prefilled in pieces on CPU (256 tokens a step) and a
    stream already running decodes between the pieces (with one 8192-token piece it waited for the whole
    prefill: that froze streams for 24 s at 7,000 tokens). Counted in decode steps, not seconds."""
    _, batched = engines
    scheduler = batched.scheduler
    assert scheduler.limits.prefill_tokens == 256
    running = batched.stream("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", max_new_tokens=200, temperature=0.0)  # never ends early
    next(running)
    long_prompt = "Here is a very long note about the harbour, its ships and its weather. " * 80
    steps_before = scheduler.steps
    next(batched.stream(long_prompt, max_new_tokens=1))
    during = scheduler.steps - steps_before
    running.close()
    assert during >= 4  # 5 pieces: a decode step of the running stream after each but the last


def test_concurrent_async_calls_are_batched(engines):
    """LangChain `ainvoke`s and LlamaIndex `acomplete`s gathered on one event loop share decode steps."""
    import asyncio

    from fusionrag_integrations.langchain import ChatFusionRAG
    from fusionrag_integrations.llamaindex import FusionRAGLLM

    alone, batched = engines
    prompts = [[("human", m[1]["content"])] for m, _ in requests()[:4]]
    sequential = [ChatFusionRAG(engine=alone, max_tokens=8).invoke(p).content for p in prompts]
    chat = ChatFusionRAG(engine=batched, max_tokens=8)
    llm = FusionRAGLLM(engine=batched, max_new_tokens=8)
    texts = [m[1]["content"] for m, _ in requests()[4:7]]
    one_by_one = [FusionRAGLLM(engine=alone, max_new_tokens=8).complete(t).text for t in texts]
    batched.scheduler.steps = batched.scheduler.batched_rows = 0

    async def together():
        return await asyncio.gather(*(chat.ainvoke(p) for p in prompts), *(llm.acomplete(t) for t in texts))

    results = asyncio.run(together())
    assert [m.content for m in results[:4]] == sequential
    assert [r.text for r in results[4:]] == one_by_one
    assert batched.scheduler.batched_rows > batched.scheduler.steps
