"""Random junk into every public entry point: a result or a FusionRAGError, never another exception, no hang.

Values of many types (None, numbers, bytes, lone surrogates, nested lists and dicts shaped like
messages) go to the engine's generate / stream / precompute / forget and to the adapters'
public methods. Each case runs in a worker thread with a time limit, and the engine must answer
a normal prompt after every test. CASES counts the cases run (reported in the closing note).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_index.core.base.llms.types import ChatMessage

from fusionrag_integrations import FusionRAGError
from tests.conftest import DOCS

CASES: Counter[str] = Counter()
CASE_TIMEOUT_S = 120.0
SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same cases on every run: CI stays reproducible
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 6)
    | st.sampled_from([2**40, -(2**40), 0.5, 1.5, -0.1, float("nan"), float("inf")])
    | st.text(max_size=24)
    | st.sampled_from(["", " ", "\ud800", "ok \udfff", "Paris", DOCS[0], "full", "qcfuse", "bogus", "user"])
    | st.binary(max_size=6)
)
keys = st.sampled_from(["role", "content", "tool_calls", "text", "type", "name"]) | st.text(max_size=4)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(keys, inner, max_size=3)
        | st.tuples(inner, inner)
        | st.builds(
            lambda role, content: {"role": role, "content": content}, st.sampled_from(["user", "system"]), inner
        )
    ),
    max_leaves=6,
)
texts = st.text(max_size=60) | st.sampled_from([*DOCS, "\ud800 x", " ", "Paris"])
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "wizard"]), "content": texts | scalars}
    ),
    max_size=3,
)
VALID = {  # per argument: values a caller might mean, mixed with junk below
    "max_new_tokens": st.integers(-1, 3),
    "max_tokens": st.integers(-1, 3),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "top_k": st.integers(0, 5),
    "seed": st.integers(0, 9),
    "stop": texts | st.lists(texts, max_size=2),
    "chunks": st.lists(st.sampled_from(DOCS) | texts, max_size=3),
    "selector": st.sampled_from(["full", "none", "epic", "cacheblend", "fusionrag", "qcfuse", "cacheclip", "hybrid"]),
    "recompute_ratio": st.floats(0, 1),
    "learn_chunks": st.booleans(),
    "tools": st.just([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
    "context": st.lists(st.sampled_from(DOCS), max_size=2),
    "neighbors": st.lists(st.lists(st.sampled_from(DOCS), max_size=2), max_size=3),
    "show_progress": st.booleans(),
}
prompts = texts | messages | junk
text_lists = st.lists(texts, max_size=3) | junk
GENERATE_KWARGS = [
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "chunks",
    "selector",
    "recompute_ratio",
    "learn_chunks",
    "tools",
]


def kwargs_of(names: list[str]):
    return st.lists(st.sampled_from(names), max_size=3, unique=True).flatmap(
        lambda chosen: st.fixed_dictionaries({n: VALID[n] | junk for n in chosen})
    )


def outcome(name: str, call: Callable[[], object]) -> str:
    """Run one case in a thread (a stream is drained): 'ok', 'rejected' (FusionRAGError), or re-raise."""
    box: dict = {}

    def run() -> None:
        try:
            result = call()
            if isinstance(result, Iterator):
                result = list(result)
            box["out"] = "ok"
        except FusionRAGError:
            box["out"] = "rejected"
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(CASE_TIMEOUT_S)
    assert not worker.is_alive(), f"{name}: no answer within {CASE_TIMEOUT_S} s"
    if "error" in box:
        raise box["error"]
    CASES[f"{name}:{box['out']}"] += 1
    return box["out"]


def bounded(kwargs: dict) -> dict:
    """Junk may say anything, but a valid request stays short (the budget is generation time)."""
    return {"max_new_tokens": 2, **kwargs}


@pytest.fixture
def fuzz_engine(smol):
    yield smol
    assert smol.generate("The capital of France is", max_new_tokens=3).token_ids  # still answers


@SETTINGS
@given(prompt=prompts, kwargs=kwargs_of(GENERATE_KWARGS), streamed=st.booleans())
def test_generate_and_stream(fuzz_engine, prompt, kwargs, streamed):
    call = fuzz_engine.stream if streamed else fuzz_engine.generate
    outcome("stream" if streamed else "generate", lambda: call(prompt, **bounded(kwargs)))


@SETTINGS
@given(texts=text_lists, kwargs=kwargs_of(["context", "neighbors", "show_progress"]), keys=text_lists)
def test_precompute_and_forget(fuzz_engine, texts, kwargs, keys):
    outcome("precompute", lambda: fuzz_engine.precompute(texts, **kwargs))
    outcome("forget", lambda: fuzz_engine.forget(keys))
    outcome("keys_for", lambda: fuzz_engine.keys_for(texts))


@SETTINGS
@given(value=prompts, kwargs=kwargs_of(["stop", "max_tokens", "temperature", "selector", "recompute_ratio", "seed"]))
def test_langchain_chat_model(fuzz_engine, value, kwargs):
    from fusionrag_integrations.langchain import ChatFusionRAG

    llm = ChatFusionRAG(engine=fuzz_engine, max_tokens=2)
    outcome("lc.invoke", lambda: llm.invoke(value, **kwargs))
    outcome("lc.stream", lambda: llm.stream(value, **kwargs))


li_messages = st.lists(
    st.builds(
        lambda role, content: ChatMessage(role=role, content=content),
        st.sampled_from(["user", "system", "assistant"]),
        texts,
    ),
    max_size=3,
)


@SETTINGS
@given(
    value=prompts,
    chat=li_messages | prompts,
    kwargs=kwargs_of(["stop", "max_tokens", "temperature", "selector", "recompute_ratio"]),
)
def test_llamaindex_llm(fuzz_engine, value, chat, kwargs):
    from fusionrag_integrations.llamaindex import FusionRAGLLM

    llm = FusionRAGLLM(engine=fuzz_engine, max_new_tokens=2)
    outcome("li.complete", lambda: llm.complete(value, **kwargs))
    outcome("li.stream_complete", lambda: llm.stream_complete(value, **kwargs))
    outcome("li.chat", lambda: llm.chat(chat, **kwargs))


def test_zz_the_junk_reached_both_outcomes(capsys):
    """Runs after the fuzz tests above: prints the case counts, and checks that the junk was not all
    rejected at the door (valid calls were made too) for the main entry points."""
    if not CASES:
        pytest.skip("the fuzz tests of this module did not run")
    with capsys.disabled():
        print(f"\nfuzz cases: {sum(CASES.values())} {dict(sorted(CASES.items()))}")
    for name in ("generate", "stream", "precompute", "lc.invoke", "li.complete", "li.chat"):
        assert CASES[f"{name}:ok"] and CASES[f"{name}:rejected"], name
