"""LlamaIndex fixtures: an engine over the session's SmolLM2 weights, LLM-event capture."""

from __future__ import annotations

from typing import Any

import pytest

from fusionrag_integrations import EngineConfig, FusionEngine


@pytest.fixture
def li_engine(smol_engine, tmp_path) -> FusionEngine:
    return FusionEngine(smol_engine.loaded, EngineConfig(cache_dir=tmp_path / "kv"))


@pytest.fixture(scope="session")
def embed_model():
    from fusionrag_integrations.llamaindex import MiniLMEmbedding

    return MiniLMEmbedding()


@pytest.fixture
def engine_calls(li_engine):
    """Records every generation the engine serves: (prompt, final chunk with stats, text).

    Recorded at the engine, not through LlamaIndex callbacks: query engines replace the LLM's
    callback manager with their own."""
    calls: list[dict[str, Any]] = []
    original = li_engine.stream

    def stream(prompt, **kwargs):
        pieces = list(original(prompt, **kwargs))
        calls.append({"prompt": prompt, "last": pieces[-1], "text": "".join(p.text for p in pieces), "kwargs": kwargs})
        yield from pieces

    li_engine.stream = stream
    yield calls
    del li_engine.stream
