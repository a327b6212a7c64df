"""LangChain fixtures: one engine over the session's SmolLM2 weights, with its own chunk store."""

from __future__ import annotations

import pytest

from fusionrag_integrations import EngineConfig, FusionEngine

ENGINE: FusionEngine | None = None  # set once per session; standard-test classes read it in a property


@pytest.fixture(scope="session", autouse=True)
def lc_engine(smol_engine, tmp_path_factory) -> FusionEngine:
    global ENGINE
    ENGINE = FusionEngine(smol_engine.loaded, EngineConfig(cache_dir=tmp_path_factory.mktemp("lc-cache")))
    return ENGINE


@pytest.fixture(scope="session")
def embeddings():
    from fusionrag_integrations.langchain import MiniLMEmbeddings

    return MiniLMEmbeddings()
