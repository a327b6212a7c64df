"""Bad arguments get a FusionRAGError subclass that names them; strings are never iterated as lists."""

from __future__ import annotations

import pytest

from fusionrag_integrations import (
    ChatTemplateError,
    ChunkNotFoundError,
    ContextLengthError,
    EngineConfig,
    FusionConfig,
    FusionRAGError,
    InvalidArgumentError,
    InvalidConfigError,
    InvalidSamplingError,
)
from tests.conftest import DOCS, rag_messages

LONE_SURROGATE = "Hello \ud800"


@pytest.mark.parametrize(
    "call, error, needle",
    [
        (lambda e: e.precompute("Paris is the capital of France."), InvalidArgumentError, "texts"),
        (lambda e: e.precompute(DOCS[:1], neighbors=["abc"]), InvalidArgumentError, "neighbors"),
        (lambda e: e.precompute(DOCS[:1], context="a text"), InvalidArgumentError, "context"),
        (lambda e: e.precompute([None]), InvalidArgumentError, r"texts\[0\]"),
        (lambda e: e.precompute([LONE_SURROGATE]), InvalidArgumentError, "surrogate"),
        (lambda e: e.forget("0" * 64), InvalidArgumentError, "keys"),
        (lambda e: e.keys_for("Paris"), InvalidArgumentError, "texts"),
        (lambda e: e.generate("Capital of France?", chunks="France"), InvalidArgumentError, "chunks"),
        (lambda e: e.generate("Capital of France?", chunks=[None]), InvalidArgumentError, r"chunks\[0\]"),
        (lambda e: e.generate(None), InvalidArgumentError, "prompt"),
        (lambda e: e.generate({"role": "user", "content": "hi"}), InvalidArgumentError, "prompt"),
        (lambda e: e.generate(b"bytes"), InvalidArgumentError, "prompt"),
        (lambda e: e.generate(["hi"]), ChatTemplateError, r"messages\[0\]"),
        (lambda e: e.generate([{"role": "user", "content": None}]), ChatTemplateError, "no content"),
        (lambda e: e.generate([{"role": "user", "content": 5}]), ChatTemplateError, "content"),
        (lambda e: e.generate(LONE_SURROGATE), InvalidArgumentError, "surrogate"),
        (lambda e: e.generate([{"role": "user", "content": LONE_SURROGATE}]), InvalidArgumentError, "surrogate"),
        (lambda e: e.generate("hi", stop=123), InvalidSamplingError, "stop"),
        (lambda e: e.generate("hi", stop=[None]), InvalidSamplingError, "stop"),
        (lambda e: e.generate("hi", selector="bogus"), InvalidArgumentError, "selector"),
        (lambda e: e.generate("hi", selector=""), InvalidArgumentError, "selector"),
        (lambda e: e.generate("hi", recompute_ratio=2), InvalidArgumentError, "recompute_ratio"),
        (lambda e: e.generate("hi", learn_chunks="yes"), InvalidArgumentError, "learn_chunks"),
        (lambda e: e.generate([{"role": "user", "content": "hi"}], tools="search"), InvalidArgumentError, "tools"),
        (lambda e: EngineConfig(cache_dir=""), InvalidConfigError, "cache_dir"),
        (lambda e: FusionConfig(recompute_ratio=3), InvalidConfigError, "recompute_ratio"),
    ],
)
def test_bad_arguments_raise_typed_errors_naming_them(smol, call, error, needle):
    with pytest.raises(error, match=needle) as caught:
        call(smol)
    assert isinstance(caught.value, FusionRAGError)
    assert smol.counters["chunks_computed"] == 0 and len(smol.chunks) == 0  # nothing stored on the way


def test_a_single_stop_string_is_one_stop_sequence(smol):
    free = smol.generate("Count: one, two, three, four", max_new_tokens=12)
    assert "," in free.text
    out = smol.generate("Count: one, two, three, four", max_new_tokens=12, stop=",")
    assert "," not in out.text and free.text.startswith(out.text)


def test_assistant_tool_call_without_content_is_accepted(smol):
    messages = [
        {"role": "user", "content": "What is the weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {}}}],
        },
        {"role": "tool", "content": "sunny"},
    ]
    assert smol.generate(messages, max_new_tokens=2).token_ids


def test_a_chunk_inside_another_given_chunk_is_served_by_it(smol):
    inner = DOCS[0][:40]
    out = smol.generate(rag_messages(DOCS), chunks=[DOCS[0], inner], max_new_tokens=4)
    assert out.stats.chunks_found == 1  # the outer chunk's KV covers the inner one


def test_a_missing_chunk_is_reported_before_any_kv_is_computed(smol):
    with pytest.raises(ChunkNotFoundError, match="do not occur"):
        smol.generate(rag_messages(DOCS[:2]), chunks=[DOCS[0], DOCS[3]])
    assert smol.counters["chunks_computed"] == 0 and smol.keys_for(DOCS) == []


def test_config_paths_expand_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert EngineConfig(cache_dir="~/fr").cache_dir == tmp_path / "fr"


def test_a_prompt_too_long_in_bytes_is_refused_before_it_is_tokenised(smol, monkeypatch):
    """A 5 MB prompt cannot fit an 8K context whatever its tokens: refused from its size alone (tokenising it
    took seconds, on the step loop before the layout moved off it)."""
    from fusionrag_integrations.fusion import layout

    def never(*args, **kwargs):
        raise AssertionError("tokenised")

    monkeypatch.setattr(layout, "encode_text", never)
    with pytest.raises(ContextLengthError, match="bytes"):
        smol.generate("x" * 5_000_000, max_new_tokens=1)
    with pytest.raises(ContextLengthError, match="bytes"):
        smol.generate([{"role": "user", "content": "y" * 5_000_000}], max_new_tokens=1)
