"""CacheClip's auxiliary model and QCFuse's profiled layer, configured through FusionConfig and used
from the public API and both framework adapters."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations import FusionConfig, InvalidConfigError
from tests.conftest import DOCS, QUESTION, engine_on, rag_messages


@pytest.fixture
def aux_engine(smol_engine, tiny_model_dirs, tmp_path):
    """The small model as main model, a random tiny Llama with its tokenizer as CacheClip's scorer."""
    return engine_on(smol_engine.loaded, tmp_path / "aux", fusion=FusionConfig(aux_model=tiny_model_dirs["llama"]))


def test_the_auxiliary_model_changes_cacheclips_picks(smol, aux_engine):
    picks = {}
    for name, engine in (("self", smol), ("aux", aux_engine)):
        engine.precompute(DOCS)
        pre = engine.prefill(rag_messages(DOCS), selector="cacheclip", recompute_ratio=0.15)
        assert pre.stats.selector == "cacheclip" and pre.stats.tokens_recomputed > 0
        picks[name] = pre.selected
    assert picks["self"].numel() == picks["aux"].numel()
    assert not torch.equal(picks["self"], picks["aux"])  # another model's attention ranks other tokens
    assert aux_engine.selectors.aux_model.config.num_layers < smol.model.config.num_layers  # the tiny scorer, loaded


def test_an_auxiliary_model_with_another_tokenizer_is_refused(smol_engine, tmp_path):
    from tests.conftest import make_tiny_model_dir

    other = make_tiny_model_dir("llama", tmp_path / "m", smol_engine.loaded.model_dir)
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text().replace('"<|im_end|>"', '"<|x|>"'))
    engine = engine_on(smol_engine.loaded, tmp_path / "c", fusion=FusionConfig(aux_model=str(other)))
    engine.precompute(DOCS)
    with pytest.raises(InvalidConfigError, match="another tokenizer"):
        engine.prefill(rag_messages(DOCS), selector="cacheclip")


def test_the_adapters_score_with_the_auxiliary_model(aux_engine):
    from llama_index.core.llms import ChatMessage

    from fusionrag_integrations.langchain import ChatFusionRAG
    from fusionrag_integrations.llamaindex import FusionRAGLLM

    aux_engine.precompute(DOCS)
    system, user = (m["content"] for m in rag_messages(DOCS))
    chat = ChatFusionRAG(engine=aux_engine, selector="cacheclip", max_tokens=4)
    stats = chat.invoke([("system", system), ("human", user)]).response_metadata["stats"]
    assert stats["selector"] == "cacheclip" and stats["tokens_recomputed"] > 0
    assert aux_engine.selectors.aux_model is not None  # loaded on this first cacheclip request
    llm = FusionRAGLLM(engine=aux_engine, selector="cacheclip", max_new_tokens=4)
    raw = llm.chat([ChatMessage(role="system", content=system), ChatMessage(role="user", content=user)]).raw
    assert raw["stats"]["selector"] == "cacheclip" and raw["stats"]["tokens_recomputed"] > 0
    assert len(aux_engine.selectors.aux_scores) == 1  # one prompt, scored once by the auxiliary model, for both


def test_qcfuse_profiles_its_layer_on_first_use_and_reads_it_back(smol_engine, tmp_path):
    engine = engine_on(smol_engine.loaded, tmp_path / "c")
    engine.precompute(DOCS)
    assert engine.critical_layers.get(engine.loaded.model_fingerprint) is None
    first = engine.generate(rag_messages(DOCS), selector="qcfuse", max_new_tokens=4)
    layer = engine.critical_layers.get(engine.loaded.model_fingerprint)
    n_layers = engine.model.config.num_layers
    assert engine.critical_layers.profiled == 1 and 0 <= layer < n_layers // 2
    assert first.stats.selector == "qcfuse" and first.stats.tokens_recomputed > 0
    second = engine.generate(rag_messages(DOCS), selector="qcfuse", max_new_tokens=4)
    assert engine.critical_layers.profiled == 1 and second.text == first.text  # read, not profiled again
    again = engine_on(smol_engine.loaded, tmp_path / "c")  # a new process on the same cache directory
    again.generate(rag_messages(DOCS), selector="qcfuse", max_new_tokens=4)
    assert again.critical_layers.profiled == 0 and again.critical_layers.get(engine.loaded.model_fingerprint) == layer


def test_engines_started_together_on_one_cache_directory_profile_once(smol_engine, tmp_path):
    """Both engines exist before either profiles: the second reads the first's layer from the directory
    instead of profiling its own first prompt (which could pick another layer and select differently)."""
    first, second = engine_on(smol_engine.loaded, tmp_path / "c"), engine_on(smol_engine.loaded, tmp_path / "c")
    first.precompute(DOCS)
    fingerprint = first.loaded.model_fingerprint
    assert first.critical_layers.get(fingerprint) is None and second.critical_layers.get(fingerprint) is None
    first.generate(rag_messages(DOCS), max_new_tokens=2)  # the default selector (hybrid) profiles here
    layer = first.critical_layers.get(fingerprint)
    other = rag_messages(DOCS[1:], "Which engine was made first?")
    second.generate(other, max_new_tokens=2)
    assert first.critical_layers.profiled == 1 and second.critical_layers.profiled == 0
    assert second.critical_layers.get(fingerprint) == layer


def test_a_configured_critical_layer_is_used_without_profiling(smol_engine, tmp_path):
    engine = engine_on(smol_engine.loaded, tmp_path / "c", fusion=FusionConfig(critical_layer=3))
    engine.precompute(DOCS)
    engine.generate(rag_messages(DOCS), selector="qcfuse", max_new_tokens=2)
    assert engine.critical_layers.profiled == 0


def test_the_adapters_profile_qcfuse_once(smol_engine, tmp_path):
    from llama_index.core.llms import ChatMessage

    from fusionrag_integrations.langchain import ChatFusionRAG
    from fusionrag_integrations.llamaindex import FusionRAGLLM

    engine = engine_on(smol_engine.loaded, tmp_path / "c")
    engine.precompute(DOCS)
    system, user = (m["content"] for m in rag_messages(DOCS, question=QUESTION))
    stats = (
        ChatFusionRAG(engine=engine, selector="qcfuse", max_tokens=4)
        .invoke([("system", system), ("human", user)])
        .response_metadata["stats"]
    )
    assert stats["selector"] == "qcfuse" and engine.critical_layers.profiled == 1
    llm = FusionRAGLLM(engine=engine, selector="qcfuse", max_new_tokens=4)
    raw = llm.chat([ChatMessage(role="system", content=system), ChatMessage(role="user", content=user)]).raw
    assert raw["stats"]["selector"] == "qcfuse" and engine.critical_layers.profiled == 1
