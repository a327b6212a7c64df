"""Each selector picks what its rule says, within budget (constructed cases on the real small model)."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.fusion.probe import attention_to_positions, profile_critical_layer
from fusionrag_integrations.fusion.recompute import select_and_recompute
from fusionrag_integrations.fusion.selectors import (
    SELECTORS,
    CacheBlendSelector,
    CacheClipSelector,
    EpicSelector,
    FusionRAGSelector,
    QCFuseSelector,
    allocate_budget,
)
from fusionrag_integrations.lru import LRU
from tests.conftest import DOCS, rag_messages


@pytest.fixture
def ctx_factory(smol):
    smol.precompute(DOCS)
    return lambda: smol.fusion_context(rag_messages(DOCS))


def chunk_of(ctx, position: int) -> int:
    return next(i for i, c in enumerate(ctx.chunks) if c.start <= position < c.end)


def decoded(engine, ctx, positions) -> list[str]:
    return [engine.tokenizer.decode([int(ctx.token_ids[p])]).strip().lower() for p in positions.tolist()]


def test_allocate_budget_is_proportional_and_exact():
    assert allocate_budget([100, 50, 50], 20) == [10, 5, 5]
    assert sum(allocate_budget([37, 51, 12, 90], 29)) == 29
    assert allocate_budget([3, 3], 10) == [3, 3]  # never more than a chunk has
    assert allocate_budget([], 5) == []


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_budget_respected_and_positions_are_chunk_tokens(smol, name, ratio):
    smol.precompute(DOCS)
    pre = smol.prefill(rag_messages(DOCS), selector=name, recompute_ratio=ratio)
    ctx = smol.fusion_context(rag_messages(DOCS))
    n_chunk = int(ctx.chunk_positions.numel())
    expected = {"full": n_chunk, "none": 0}.get(name, ratio * n_chunk)
    assert abs(pre.selected.numel() - expected) <= 1  # hybrid too: its adaptive ratio is off by default
    assert set(pre.selected.tolist()) <= set(ctx.chunk_positions.tolist())
    assert pre.selected.unique().numel() == pre.selected.numel()


def test_epic_takes_the_first_tokens_of_each_chunk(ctx_factory):
    ctx = ctx_factory()
    lengths = [c.entry.num_tokens for c in ctx.chunks]
    picked = EpicSelector().select(ctx, 20)
    for chunk, want in zip(ctx.chunks, allocate_budget(lengths, 20)):
        mine = [p for p in picked.tolist() if chunk.start <= p < chunk.end]
        assert mine == list(range(chunk.start, chunk.start + want))


def test_cacheblend_selects_tokens_whose_cached_kv_deviates(smol):
    smol.precompute(DOCS)
    ctx = smol.fusion_context(rag_messages(DOCS))
    check = 1
    corrupted = ctx.chunk_positions[
        torch.randperm(ctx.chunk_positions.numel(), generator=torch.Generator().manual_seed(0))[:12]
    ]
    ctx.cache.v[check, corrupted] += 5.0  # cached values far from what the check layer will compute
    _, selected = select_and_recompute(ctx, CacheBlendSelector(check_layer=check), budget=12)
    assert set(selected.tolist()) == set(corrupted.tolist())


def test_fusionrag_selects_per_chunk_and_finds_the_question_terms(smol, ctx_factory):
    ctx = ctx_factory()
    lengths = [c.entry.num_tokens for c in ctx.chunks]
    budget = 24
    picked = FusionRAGSelector().select(ctx, budget)
    per_chunk = [sum(chunk_of(ctx, p) == i for p in picked.tolist()) for i in range(len(ctx.chunks))]
    assert per_chunk == allocate_budget(lengths, budget)
    words = decoded(smol, ctx, picked)
    assert "password" in words and "archive" in words  # the terms the question asks about


def test_attention_probe_matches_naive_per_head_softmax():
    torch.manual_seed(0)
    q, keys = torch.randn(5, 6, 16), torch.randn(40, 2, 16)  # GQA group 3
    q_pos = torch.tensor([30, 31, 35, 38, 39])
    key_positions = torch.tensor([3, 7, 8, 20, 29, 33])
    got = attention_to_positions(q, keys, q_pos, key_positions)
    want = torch.zeros(40)
    for i in range(5):
        for h in range(6):
            s = keys[: q_pos[i] + 1, h // 3] @ q[i, h] / 4.0
            want[: q_pos[i] + 1] += s.softmax(0)
    assert torch.allclose(got, want[key_positions], atol=1e-5)


def test_qcfuse_combines_critical_layer_attention_and_key_norm(ctx_factory):
    layer, budget = 5, 20
    by_attention = set(_qcfuse(ctx_factory(), layer, budget, share=1.0).tolist())
    ctx = ctx_factory()
    norms = ctx.cache.k[layer, ctx.chunk_positions].float().norm(dim=-1).mean(dim=-1)
    by_norm = set(ctx.chunk_positions[torch.topk(norms, budget).indices].tolist())
    assert set(_qcfuse(ctx_factory(), layer, budget, share=0.0).tolist()) == by_norm
    mixed = set(_qcfuse(ctx_factory(), layer, budget, share=0.75).tolist())
    top_attention = set(_qcfuse(ctx_factory(), layer, 15, share=1.0).tolist())
    assert top_attention <= mixed and top_attention <= by_attention
    rest = sorted(
        set(ctx.chunk_positions.tolist()) - top_attention,
        key=lambda p: -norms[(ctx.chunk_positions == p).nonzero()[0, 0]].item(),
    )
    assert mixed - top_attention == set(rest[:5])


def _qcfuse(ctx, layer, budget, share):
    sel = QCFuseSelector(critical_layer=layer)
    sel.attention_share = share
    return sel.select(ctx, budget)


def test_qcfuse_probe_stops_at_the_critical_layer(ctx_factory):
    ctx = ctx_factory()
    before = ctx.cache.k[6:, ctx.fresh_positions].clone()
    QCFuseSelector(critical_layer=5).select(ctx, 10)
    # layers above the critical one were never run for the fresh tokens (their rows are untouched: bit for
    # bit, NaN for NaN, as nothing wrote them and the allocator may have left anything there)
    torch.testing.assert_close(ctx.cache.k[6:, ctx.fresh_positions], before, rtol=0, atol=0, equal_nan=True)


def test_cacheclip_follows_its_auxiliary_model(smol, tiny_engines, ctx_factory):
    same = CacheClipSelector().select(ctx_factory(), 16)
    assert "password" in decoded(smol, ctx_factory(), same) and "sword" in decoded(smol, ctx_factory(), same)
    aux = tiny_engines["llama"].model  # same tokenizer, different (random) weights
    other = CacheClipSelector(aux_model=aux).select(ctx_factory(), 16)
    assert other.numel() == 16 and set(other.tolist()) != set(same.tolist())


def test_profile_critical_layer_returns_a_shallow_layer(smol, ctx_factory):
    layer, recall = profile_critical_layer([ctx_factory(), ctx_factory()], ratio=0.15)
    n = smol.model.config.num_layers
    assert len(recall) == n and 0 <= layer < n // 2
    assert recall[layer] == max(recall[: n // 2]) and all(0.0 <= r <= 1.0 for r in recall)


def test_cacheclip_reuses_auxiliary_scores_across_budgets(ctx_factory, monkeypatch):
    import fusionrag_integrations.fusion.selectors as sel

    scores = LRU(max_entries=8)  # the engine's per-instance score cache, shared by its requests
    calls = []
    real = sel.probe_attention
    monkeypatch.setattr(sel, "probe_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    small = CacheClipSelector(scores=scores).select(ctx_factory(), 8)
    large = CacheClipSelector(scores=scores).select(ctx_factory(), 24)
    assert len(calls) == 1 and set(small.tolist()) <= set(large.tolist())
