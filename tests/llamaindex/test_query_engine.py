"""Unchanged LlamaIndex query and chat engines over FusionRAGChromaVectorStore + FusionRAGLLM."""

from __future__ import annotations

import chromadb
import pytest
import torch
from llama_index.core import Document, StorageContext, VectorStoreIndex

from fusionrag_integrations.demo_corpus import PASSAGES
from fusionrag_integrations.llamaindex import FusionRAGChromaVectorStore, FusionRAGLLM


def build_index(engine, embed_model, tmp_path, with_metadata: bool):
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    store = FusionRAGChromaVectorStore(engine=engine, chroma_collection=client.get_or_create_collection("space"))
    docs = [
        Document(text=p, metadata={"source": f"passage-{i}", "topic": "spaceflight"} if with_metadata else {})
        for i, p in enumerate(PASSAGES)
    ]
    return VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model
    )


@pytest.mark.parametrize("with_metadata", [False, True])
def test_default_query_engine_reuses_every_retrieved_node(
    li_engine, embed_model, tmp_path, engine_calls, with_metadata
):
    index = build_index(li_engine, embed_model, tmp_path, with_metadata)
    assert li_engine.counters["chunks_computed"] == len(PASSAGES)  # precomputed on insert
    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=24)
    engine = index.as_query_engine(llm=llm, similarity_top_k=4)
    response = engine.query("Where does the James Webb Space Telescope orbit?")
    assert str(response).strip() and len(response.source_nodes) == 4
    [call] = engine_calls
    stats = call["last"].stats
    assert stats.chunks_found == 4 and stats.chunks_reused == 4 and stats.chunks_computed == 0
    assert call["prompt"][0]["role"] == "system"  # the chat variant of the QA template
    if with_metadata:  # the cached text includes the metadata lines LlamaIndex renders
        assert "source: passage-" in call["prompt"][-1]["content"]


def test_context_overflow_resplit_still_answers_exactly(li_engine, embed_model, tmp_path, engine_calls, hf_smol):
    """A small window makes LlamaIndex re-split the packed context across node boundaries: unmatched text
    is computed fresh, and with selector 'full' each answer equals full attention token for token."""
    index = build_index(li_engine, embed_model, tmp_path, with_metadata=False)
    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=12, context_window=650, selector="full")
    response = index.as_query_engine(llm=llm, similarity_top_k=4).query("Which planets did Voyager 2 visit?")
    assert str(response).strip()
    assert len(engine_calls) >= 2  # compact + refine: the context did not fit one call
    found = [c["last"].stats.chunks_found for c in engine_calls]
    assert min(found) < 4 and sum(found) < 4 * len(engine_calls)  # cut nodes could not be matched
    for call in engine_calls[:2]:  # the compact call and a refine (each checked against transformers: slow)
        ids = li_engine.prefill(call["prompt"], selector="full").token_ids
        with torch.no_grad():
            ref = hf_smol.generate(
                torch.tensor([ids]),
                max_new_tokens=12,
                do_sample=False,
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            )
        assert call["last"].stats.chunks_found == li_engine.prefill(call["prompt"]).stats.chunks_found
        assert call["text"] == li_engine.tokenizer.decode(ref[0, len(ids) :], skip_special_tokens=True)


def test_chat_engine_condense_plus_context_reuses_chunks(li_engine, embed_model, tmp_path, engine_calls):
    index = build_index(li_engine, embed_model, tmp_path, with_metadata=True)
    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=16)
    chat = index.as_chat_engine(chat_mode="condense_plus_context", llm=llm, similarity_top_k=3)
    first = chat.chat("Tell me about the Hubble Space Telescope.")
    second = chat.chat("When was it launched?")
    assert str(first).strip() and str(second).strip()
    answers = [c for c in engine_calls if c["last"].stats.chunks_found]
    assert len(answers) == 2 and all(c["last"].stats.chunks_reused == 3 for c in answers)


async def test_query_engine_responses_carry_the_fusion_stats(li_engine, embed_model, tmp_path):
    """No wrapper, no monkeypatch: `response.metadata["fusionrag"]` holds what fusion did in that query,
    for query() and aquery(), and concurrent queries keep their own stats."""
    import asyncio

    index = build_index(li_engine, embed_model, tmp_path, with_metadata=False)
    engine = index.as_query_engine(llm=FusionRAGLLM(engine=li_engine, max_new_tokens=4), similarity_top_k=4)
    stats = engine.query("Where does the James Webb Space Telescope orbit?").metadata["fusionrag"]
    assert stats["llm_calls"] == 1 and stats["chunks_found"] == 4 and stats["chunks_reused"] == 4
    assert stats["calls"][0]["tokens_recomputed"] == stats["tokens_recomputed"] > 0
    full = index.as_query_engine(llm=FusionRAGLLM(engine=li_engine, max_new_tokens=4, selector="full"))
    responses = await asyncio.gather(engine.aquery("Who stayed in lunar orbit?"), full.aquery("Who stayed in orbit?"))
    fused_stats, full_stats = (r.metadata["fusionrag"] for r in responses)
    assert fused_stats["llm_calls"] == 1 and fused_stats["calls"][0]["selector"] == "hybrid"  # the default
    assert full_stats["llm_calls"] == 1 and full_stats["chunks_recomputed"] == full_stats["chunks_found"] > 0
