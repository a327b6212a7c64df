"""Generation against transformers' generate, streaming, stop strings, chat messages."""

from __future__ import annotations

import pytest
import torch

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "Explain photosynthesis in one sentence.",
    "Who wrote Romeo and Juliet?",
]


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("question", PROMPTS)
def test_greedy_tokens_identical_to_transformers_generate(smol_engine, hf_smol, question):
    tok = smol_engine.tokenizer
    rendered = tok.apply_chat_template(chat(question), tokenize=False, add_generation_prompt=True)
    ids = tok(rendered, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = hf_smol.generate(ids, max_new_tokens=32, do_sample=False, attention_mask=torch.ones_like(ids))
    ref_new = [t for t in ref[0, ids.shape[1] :].tolist() if t not in smol_engine.loaded.eos_token_ids]
    out = smol_engine.generate(chat(question), max_new_tokens=32)
    assert out.token_ids == ref_new
    assert out.usage.prompt_tokens == ids.shape[1]
    assert out.usage.completion_tokens == len(out.token_ids)
    assert out.finish_reason == ("length" if len(out.token_ids) == 32 else "stop")


def test_stream_pieces_concatenate_to_generate(smol_engine):
    pieces = list(smol_engine.stream(chat(PROMPTS[1]), max_new_tokens=24))
    full = smol_engine.generate(chat(PROMPTS[1]), max_new_tokens=24)
    assert "".join(p.text for p in pieces) == full.text
    assert [t for p in pieces for t in p.token_ids] == full.token_ids
    assert all(p.finish_reason is None for p in pieces[:-1])
    last = pieces[-1]
    assert last.finish_reason in ("stop", "length") and last.stats is not None and last.usage is not None
    assert 0 < last.stats.ttft_ms and 0 < last.stats.prefill_ms <= last.stats.ttft_ms and last.stats.decode_ms > 0


def test_prompt_is_not_echoed(smol_engine):
    prompt = "The quick brown fox jumps over the lazy dog. The quick brown fox"
    out = smol_engine.generate(prompt, max_new_tokens=8)
    assert not out.text.startswith(prompt[:20])
    assert out.usage.prompt_tokens == len(smol_engine.tokenizer(prompt).input_ids)


def test_stop_string_ends_generation_and_is_not_returned(smol_engine):
    free = smol_engine.generate(chat("Count from 1 to 10, separated by commas."), max_new_tokens=40)
    assert "4" in free.text, free.text  # the model does count; the stop below is reachable
    stop = "4"
    out = smol_engine.generate(chat("Count from 1 to 10, separated by commas."), max_new_tokens=40, stop=[stop])
    assert out.finish_reason == "stop"
    assert stop not in out.text
    assert free.text.startswith(out.text)
    streamed = "".join(
        p.text
        for p in smol_engine.stream(chat("Count from 1 to 10, separated by commas."), max_new_tokens=40, stop=[stop])
    )
    assert streamed == out.text


def test_length_finish_reason(smol_engine):
    out = smol_engine.generate("Once upon a time", max_new_tokens=5)
    assert out.finish_reason == "length" and len(out.token_ids) == 5


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(smol_engine):
    kw = dict(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50)
    a = smol_engine.generate("Once upon a time", seed=7, **kw)
    b = smol_engine.generate("Once upon a time", seed=7, **kw)
    others = {tuple(smol_engine.generate("Once upon a time", seed=s, **kw).token_ids) for s in range(8, 12)}
    assert a.token_ids == b.token_ids
    assert len(others | {tuple(a.token_ids)}) > 1


def test_consecutive_same_role_messages_are_merged(smol_engine):
    split = [{"role": "user", "content": "What is the capital"}, {"role": "user", "content": "of France?"}]
    merged = [{"role": "user", "content": "What is the capital\n\nof France?"}]
    assert (
        smol_engine.generate(split, max_new_tokens=8).token_ids
        == smol_engine.generate(merged, max_new_tokens=8).token_ids
    )


def test_system_and_assistant_turns(smol_engine):
    out = smol_engine.generate(
        [
            ("system", "Answer in one word."),
            ("user", "Capital of Italy?"),
            ("assistant", "Rome."),
            ("user", "Capital of Spain?"),
        ],
        max_new_tokens=8,
    )
    assert out.text.strip()
