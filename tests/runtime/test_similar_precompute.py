"""Similarity-guided precompute (FusionRAG's offline stage): each chunk computed after its neighbours."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.model.attention import AttentionMode
from tests.conftest import DOCS, rag_messages


def manual_kv(engine, context: list[str], chunk: str):
    ids = engine.prefix_ids + [t for c in context for t in engine.layout.chunk_token_ids(c)]
    start = len(ids)
    ids += engine.layout.chunk_token_ids(chunk)
    cache = engine.model.new_cache(len(ids))
    engine.model.forward(torch.tensor(ids), torch.arange(len(ids)), cache, AttentionMode.CAUSAL_FROM_ZERO)
    return cache.k[:, start:], cache.v[:, start:], start


def test_stored_kv_equals_a_prefill_of_neighbours_then_chunk(smol):
    neighbors = [[DOCS[1], DOCS[2]], [DOCS[0]], [DOCS[3], DOCS[0], DOCS[1]]]
    keys = smol.precompute(DOCS[:3], neighbors=neighbors)
    for key, chunk, context in zip(keys, DOCS[:3], neighbors):
        entry = smol.chunks.get(key)
        k, v, start = manual_kv(smol, context, chunk)
        assert entry.start == start and entry.context_id.startswith("nbr:")
        assert (entry.k - k).abs().max().item() < 1e-4 and (entry.v - v).abs().max().item() < 1e-4


def test_context_id_names_the_neighbour_set(smol):
    [a] = smol.precompute([DOCS[0]], neighbors=[[DOCS[1], DOCS[2]]])
    [same] = smol.precompute([DOCS[0]], neighbors=[[DOCS[1], DOCS[2]]])
    [other] = smol.precompute([DOCS[0]], neighbors=[[DOCS[1], DOCS[3]]])
    [order] = smol.precompute([DOCS[0]], neighbors=[[DOCS[2], DOCS[1]]])
    [alone] = smol.precompute([DOCS[0]])
    assert a == same and len({a, other, order, alone}) == 4
    ids = {smol.chunks.get(k).context_id for k in (a, other, order, alone)}
    assert len(ids) == 4 and "standalone" in ids


def test_query_time_prefers_the_similarity_entry_and_falls_back(smol):
    smol.precompute(DOCS)  # standalone entries for all
    [guided] = smol.precompute([DOCS[3]], neighbors=[[DOCS[0], DOCS[1]]])
    chunks = smol.fusion_context(rag_messages(DOCS)).chunks
    used = {c.entry.key for c in chunks}
    assert guided in used and sum(c.entry.context_id != "standalone" for c in chunks) == 1
    smol.forget([guided])  # dropped: the standalone entry serves again, nothing is recomputed
    chunks = smol.fusion_context(rag_messages(DOCS)).chunks
    assert all(c.entry.context_id == "standalone" for c in chunks)
    assert smol.counters["chunks_computed"] == len(DOCS) + 1


def test_neighbors_argument_is_validated(smol):
    with pytest.raises(ValueError, match="one list per text"):
        smol.precompute(DOCS[:2], neighbors=[[DOCS[2]]])
    with pytest.raises(ValueError, match="not both"):
        smol.precompute(DOCS[:1], context=[DOCS[1]], neighbors=[[DOCS[2]]])
