"""The adapters accept what the engine accepts and respect the engine's own configuration."""

from __future__ import annotations

from pathlib import Path

from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path
from tests.conftest import DOCS, rag_messages


def test_model_paths_are_accepted_as_path_objects():
    from fusionrag_integrations.langchain import ChatFusionRAG
    from fusionrag_integrations.llamaindex import FusionRAGLLM

    path = default_model_path()
    assert isinstance(path, Path)
    chat, llm = ChatFusionRAG(model=path, max_tokens=2), FusionRAGLLM(model=path, max_new_tokens=2)
    assert chat.engine is llm.engine  # one engine per model, whatever the path's type
    assert chat.invoke("Hi").content and llm.complete("Hi").text


def test_engine_config_learn_chunks_is_respected_through_both_adapters(smol_engine, tmp_path):
    from fusionrag_integrations.langchain import ChatFusionRAG
    from fusionrag_integrations.llamaindex import FusionRAGLLM

    engine = FusionEngine(smol_engine.loaded, EngineConfig(cache_dir=tmp_path, learn_chunks=True, learn_min_chars=80))
    messages = rag_messages(DOCS[:2])
    ChatFusionRAG(engine=engine, max_tokens=2).invoke([(m["role"], m["content"]) for m in messages])
    assert engine.counters["chunks_learned"] == 2
    from llama_index.core.base.llms.types import ChatMessage

    FusionRAGLLM(engine=engine, max_new_tokens=2).chat(
        [ChatMessage(role=m["role"], content=m["content"]) for m in rag_messages(DOCS[2:])]
    )
    assert engine.counters["chunks_learned"] == 4
    ChatFusionRAG(engine=engine, max_tokens=2, learn_chunks=False).invoke(
        [(m["role"], m["content"]) for m in rag_messages([d + " More." for d in DOCS])]
    )
    assert engine.counters["chunks_learned"] == 4  # an explicit setting still wins


def test_full_selector_stats_say_every_chunk_was_recomputed(smol):
    smol.precompute(DOCS)
    full = smol.generate(rag_messages(DOCS), max_new_tokens=2, selector="full").stats
    assert (full.chunks_found, full.chunks_reused, full.chunks_recomputed) == (4, 0, 4)
    assert full.tokens_reused == 0 and full.tokens_recomputed > 0
    fused = smol.generate(rag_messages(DOCS), max_new_tokens=2, selector="fusionrag").stats
    assert (fused.chunks_found, fused.chunks_reused, fused.chunks_recomputed) == (4, 4, 0)


def test_one_converted_model_serves_every_cache_dir(tmp_path):
    """Two engines with different cache directories load the one converted copy in the model cache."""
    from tests.conftest import MODELS

    a, b = (
        FusionEngine.from_pretrained(
            default_model_path(), device="cpu", config=EngineConfig(cache_dir=tmp_path / n, model_cache_dir=MODELS)
        )
        for n in ("a", "b")
    )
    assert a.loaded.model_dir == b.loaded.model_dir and a.loaded.model_dir.parent == MODELS
    assert not any((tmp_path / n / "models").exists() for n in ("a", "b"))


def test_a_field_the_adapters_lack_is_refused_and_max_tokens_is_understood(smol_engine):
    import pytest
    from pydantic import ValidationError

    from fusionrag_integrations.langchain import ChatFusionRAG
    from fusionrag_integrations.llamaindex import FusionRAGLLM

    for cls in (ChatFusionRAG, FusionRAGLLM):
        with pytest.raises(ValidationError, match="max_tokns"):
            cls(engine=smol_engine, max_tokns=5)
    llm = FusionRAGLLM(engine=smol_engine, max_tokens=3)  # OpenAILike's name
    assert llm.max_new_tokens == 3 and llm.metadata.num_output == 3
    usage = llm.complete("Count: 1, 2,").raw["usage"]
    assert 0 < usage["completion_tokens"] <= 3


def test_max_retries_resends_a_request_the_engine_could_not_start_and_api_key_warns(smol, monkeypatch):
    import pytest

    from fusionrag_integrations.errors import EngineUnavailableError
    from fusionrag_integrations.langchain import ChatFusionRAG

    real, failures = smol.stream, []

    def flaky(prompt, **settings):  # the step loop failed this many times before the request's first piece
        if len(failures) < 2:
            failures.append(1)
            raise EngineUnavailableError("the step loop failed; retrying is safe")
        return real(prompt, **settings)

    monkeypatch.setattr(smol, "stream", flaky)
    assert ChatFusionRAG(engine=smol, max_tokens=3, max_retries=2).invoke("Hi").content
    failures.clear()
    with pytest.raises(EngineUnavailableError):
        ChatFusionRAG(engine=smol, max_tokens=3, max_retries=1).invoke("Hi")
    failures.clear()
    assert "".join(c.content for c in ChatFusionRAG(engine=smol, max_tokens=3, max_retries=2).stream("Hi"))
    with pytest.warns(UserWarning, match="api_key has no effect"):
        assert "api_key" not in ChatFusionRAG(engine=smol, api_key="sk-123").model_dump()
