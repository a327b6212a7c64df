"""Precompute: idempotent, batched equals one-at-a-time, equals a manual prefill of [prefix + chunk]."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations import ContextLengthError, EmptyPromptError
from fusionrag_integrations.model.attention import AttentionMode
from tests.conftest import DOCS


# 30 fp32 layers of differently shaped GEMMs (batched vs single) drift by ~2e-5: compare at 1e-4.
def manual_chunk_kv(engine, prefix_ids: list[int], chunk_ids: list[int]):
    ids = prefix_ids + chunk_ids
    cache = engine.model.new_cache(len(ids))
    engine.model.forward(torch.tensor(ids), torch.arange(len(ids)), cache, AttentionMode.CAUSAL_FROM_ZERO)
    rows = slice(len(prefix_ids), len(ids))
    return cache.k[:, rows], cache.v[:, rows]


def test_precompute_is_idempotent(smol):
    keys = smol.precompute(DOCS)
    assert smol.counters["chunks_computed"] == len(DOCS) and len(set(keys)) == len(DOCS)
    assert smol.precompute(DOCS + DOCS) == keys + keys
    assert smol.counters["chunks_computed"] == len(DOCS)  # nothing computed the second time


def test_stored_kv_equals_manual_prefill_after_shared_prefix(smol):
    """Chunks of different lengths share one padded batch; each must equal its own prefill."""
    keys = smol.precompute(DOCS)
    assert smol.prefix_ids  # BOS (the shared attention sink)
    for key, doc in zip(keys, DOCS):
        entry = smol.chunks.get(key)
        k, v = manual_chunk_kv(smol, smol.prefix_ids, smol.layout.chunk_token_ids(doc))
        assert entry.start == len(smol.prefix_ids)
        assert (entry.k - k).abs().max().item() < 1e-4 and (entry.v - v).abs().max().item() < 1e-4


def test_small_batches_give_the_same_kv(smol_engine, tmp_path):
    from tests.conftest import engine_on

    one_by_one = engine_on(smol_engine.loaded, tmp_path / "a", precompute_batch_tokens=1)
    together = engine_on(smol_engine.loaded, tmp_path / "b")
    for a, b in zip(one_by_one.precompute(DOCS), together.precompute(DOCS)):
        assert a == b
        ea, eb = one_by_one.chunks.get(a), together.chunks.get(b)
        assert (ea.k - eb.k).abs().max().item() < 1e-4


def test_context_is_part_of_the_key_and_of_the_kv(smol):
    [standalone] = smol.precompute([DOCS[1]])
    [with_ctx] = smol.precompute([DOCS[1]], context=[DOCS[0]])
    [other_ctx] = smol.precompute([DOCS[1]], context=[DOCS[2]])
    assert len({standalone, with_ctx, other_ctx}) == 3
    entry = smol.chunks.get(with_ctx)
    prefix = smol.prefix_ids + smol.layout.chunk_token_ids(DOCS[0])
    k, _ = manual_chunk_kv(smol, prefix, smol.layout.chunk_token_ids(DOCS[1]))
    assert entry.start == len(prefix) and (entry.k - k).abs().max().item() < 1e-4
    assert entry.context_id != "standalone"
    # at query time the context-aware entry is preferred over the standalone one
    assert smol.chunks.refs_for(DOCS[1].strip())[0].context_id != "standalone"


def test_chunk_too_long_for_the_context_window(smol):
    with pytest.raises(ContextLengthError, match="does not fit the context window"):
        smol.precompute(["word " * (smol.context_window + 5)])


def test_empty_chunk(smol):
    with pytest.raises(EmptyPromptError, match="empty"):
        smol.precompute(["   \n"])


def test_forget_removes_everywhere(smol):
    keys = smol.precompute(DOCS)
    path = smol.chunks.store.path(keys[0])
    assert path.is_file()
    assert smol.forget([keys[0], "not-a-key"]) == 1
    assert not path.is_file() and smol.chunks.get(keys[0]) is None
    assert [r for r in smol.chunks.catalog.refs_since(0)[0] if r.text == DOCS[0]] == []
    pre = smol.prefill([{"role": "user", "content": "\n\n".join(DOCS)}], selector="none")
    assert pre.stats.chunks_found == len(DOCS) - 1  # the forgotten one is plain text again
