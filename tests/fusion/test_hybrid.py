"""The hybrid selector's levers, each checked against what it promises (real small model, fp32 CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fusionrag_integrations.errors import InvalidArgumentError
from fusionrag_integrations.evaluation.variants import build_selector, parse_spec
from fusionrag_integrations.fusion.hybrid import (
    DeviationReference,
    HybridSelector,
    chunk_deviation,
    pick_global,
    pick_within_chunks,
)
from fusionrag_integrations.fusion.probe import probe_attention
from fusionrag_integrations.fusion.selector_base import allocate_budget, allocate_weighted
from fusionrag_integrations.model.attention import AttentionMode
from tests.conftest import DOCS, rag_messages


@pytest.fixture
def ctx_factory(smol):
    smol.precompute(DOCS)
    return lambda: smol.fusion_context(rag_messages(DOCS))


def per_chunk(ctx, picked: torch.Tensor) -> list[list[int]]:
    return [[p - c.start for p in picked.tolist() if c.start <= p < c.end] for c in ctx.chunks]


def test_allocate_weighted_follows_weights_caps_and_sums_exactly():
    assert allocate_weighted([100, 100, 100], [1.0, 2.0, 1.0], 40) == [10, 20, 10]
    assert allocate_weighted([5, 100, 100], [10.0, 1.0, 1.0], 30) == [5, 13, 12]  # a full chunk's excess moves on
    assert allocate_weighted([4, 4], [1.0, 0.0], 6) == [4, 2]  # weight 0 still takes what nobody else can
    assert allocate_weighted([3, 3], [0.0, 0.0], 4) == [2, 2]
    assert allocate_weighted([3, 3], [1.0, 1.0], 99) == [3, 3]
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(0, 60, (7,), generator=g).tolist()
        weights = torch.rand(7, generator=g).tolist()
        budget = int(torch.randint(0, 300, (1,), generator=g))
        got = allocate_weighted(lengths, weights, budget)
        assert sum(got) == min(budget, sum(lengths)) and all(0 <= c <= n for c, n in zip(got, lengths))
        assert got == allocate_weighted(lengths, weights, budget)  # deterministic
    assert allocate_budget([37, 51, 12, 90], 29) == allocate_weighted([37, 51, 12, 90], [37, 51, 12, 90], 29)


def test_deviation_reference_keeps_the_mean_factor_at_one():
    ref = DeviationReference(window=1000, spread=0.5)
    assert ref.observe(0.4) == pytest.approx(1.0)  # the first request sets the scale
    assert ref.observe(0.4) == pytest.approx(1.0)  # the same deviation again ranks in the middle
    torch.manual_seed(1)
    heavy_tail = torch.distributions.LogNormal(0.0, 2.0).sample((600,)).tolist()  # a few very hard requests
    factors = [ref.observe(d) for d in heavy_tail]
    assert sum(factors[100:]) / 500 == pytest.approx(1.0, abs=0.03)
    assert all(0.5 <= f <= 1.5 for f in factors)
    assert ref.observe(1e9) > 1.49 and ref.observe(0.0) < 0.51  # hard and easy requests stand out


def test_chunk_deviation_is_exact_at_layer_one_and_leaves_the_cache_as_placed(smol, ctx_factory):
    ctx = ctx_factory()
    probe_attention(ctx, ctx.model, ctx.cache, layers={3}, full=False)  # writes the fresh tokens' K/V
    placed_k, placed_v = ctx.cache.k.clone(), ctx.cache.v.clone()
    got = chunk_deviation(ctx, layer=1, stride=4)
    # bit for bit, NaN for NaN: rows no layer wrote yet hold whatever the allocator left there
    torch.testing.assert_close(ctx.cache.k, placed_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(ctx.cache.v, placed_v, rtol=0, atol=0, equal_nan=True)
    # reference: a full prefill's layer-1 K/V of the same tokens vs the placed (cached) ones
    full = smol.model.new_cache(ctx.num_positions)
    positions = torch.arange(ctx.num_positions)
    smol.model.forward(ctx.token_ids, positions, full, AttentionMode.CAUSAL_FROM_ZERO, ctx.num_positions - 1)
    want = []
    for c in ctx.chunks:
        rows = torch.arange(c.start, c.end, 4)
        fk, fv, ok, ov = full.k[1, rows], full.v[1, rows], placed_k[1, rows], placed_v[1, rows]
        diff = ((fk - ok) ** 2).sum(dim=(1, 2)) + ((fv - ov) ** 2).sum(dim=(1, 2))
        want.append(float((diff / ((ok**2).sum(dim=(1, 2)) + (ov**2).sum(dim=(1, 2)))).mean()))
    assert min(want) > 0  # chunks computed alone do deviate here
    assert torch.allclose(torch.tensor(got), torch.tensor(want), rtol=1e-3)


def test_budget_follows_deviation_and_every_chunk_keeps_its_sink(ctx_factory):
    ctx = ctx_factory()
    selector = HybridSelector(critical_layer=5, sink_tokens=2, adaptive=None, sink_scope="all")
    picked = selector.select(ctx, 40)
    fresh = ctx_factory()
    probe_attention(fresh, fresh.model, fresh.cache, layers={5}, full=False)  # as the selector does
    deviation = chunk_deviation(fresh, 1, selector.deviation_stride)
    lengths = [c.entry.num_tokens for c in ctx.chunks]
    counts = [len(offsets) for offsets in per_chunk(ctx, picked)]
    assert picked.numel() == 40 and picked.unique().numel() == 40
    assert counts == allocate_weighted(lengths, [n * d for n, d in zip(lengths, deviation)], 40)
    assert counts != allocate_budget(lengths, 40)  # the deviations here are unequal enough to move budget
    for offsets, want in zip(per_chunk(ctx, picked), counts):
        assert set(range(min(2, want))) <= set(offsets)
    no_sink = HybridSelector(critical_layer=5, sink_tokens=0, adaptive=None, budget="length").select(ctx_factory(), 40)
    assert [len(o) for o in per_chunk(ctx, no_sink)] == allocate_budget(lengths, 40)


def test_adaptive_ratio_scales_the_budget_by_the_deviations_rank(ctx_factory):
    ref = DeviationReference(spread=0.5)
    first = HybridSelector(critical_layer=5, adaptive=ref).select(ctx_factory(), 30)
    assert first.numel() == 30  # nothing to rank against yet
    easy, hard = DeviationReference(spread=0.5), DeviationReference(spread=0.5)
    for _ in range(9):
        easy.observe(1e6)  # every earlier request deviated far more: this one is easy
        hard.observe(1e-9)
    assert HybridSelector(critical_layer=5, adaptive=easy).select(ctx_factory(), 30).numel() == round(30 * 0.55)
    assert HybridSelector(critical_layer=5, adaptive=hard).select(ctx_factory(), 30).numel() == round(30 * 1.45)


def test_engine_hybrid_uses_its_config_and_one_reference(smol):
    smol.precompute(DOCS)
    before = smol.selectors.deviations.count
    pre = smol.prefill(rag_messages(DOCS), selector="hybrid", recompute_ratio=0.2)
    assert pre.stats.selector == "hybrid" and smol.selectors.deviations.count == before  # adaptive: off by default
    chunk_tokens = pre.stats.tokens_recomputed + pre.stats.tokens_reused
    assert abs(pre.stats.tokens_recomputed - 0.2 * chunk_tokens) <= 1
    adaptive = build_selector(smol, "hybrid:adaptive=1")
    pre = smol.prefill(rag_messages(DOCS), selector=adaptive, recompute_ratio=0.2)
    assert smol.selectors.deviations.count == before + 1  # the engine's one reference
    assert 0.1 * chunk_tokens - 1 <= pre.stats.tokens_recomputed <= 0.3 * chunk_tokens + 1


def test_variant_specs_parse_and_refuse_typed():
    assert parse_spec("hybrid:sink=0,adaptive=0") == ("hybrid", {"sink": "0", "adaptive": "0"})
    assert parse_spec("qcfuse") == ("qcfuse", {})
    for bad in ("nope", "qcfuse:sink=1", "hybrid:sink", "hybrid:depth=3"):
        with pytest.raises(InvalidArgumentError):
            parse_spec(bad)


def test_variant_builds_the_levers_it_names(smol):
    assert build_selector(smol, "hybrid") == "hybrid"
    assert build_selector(smol, "hybrid:sinks=all").sink_scope == "all"
    variant = build_selector(smol, "hybrid:sink=0,adaptive=0,budget=length")
    assert isinstance(variant, HybridSelector)
    assert (variant.sink_tokens, variant.adaptive, variant.budget) == (0, None, "length")
    assert build_selector(smol, "hybrid:sink=3").adaptive is None  # off by default
    assert build_selector(smol, "hybrid:sink=3,adaptive=1").adaptive is smol.selectors.deviations
    with pytest.raises(InvalidArgumentError):
        build_selector(smol, "hybrid:budget=attention")
    assert build_selector(smol, "hybrid:budget=global").budget == "global"


def reference_pick(ctx, attention, key_norm, wants, sink, share) -> torch.Tensor:
    """The rule, chunk by chunk with topk: the vectorised pick must equal it."""
    picked, offset = [], 0
    for c, want in zip(ctx.chunks, wants):
        n = c.entry.num_tokens
        att, norm = attention[offset : offset + n].clone(), key_norm[offset : offset + n].clone()
        offset += n
        s = min(sink, want)
        att[:s], norm[:s] = float("-inf"), float("-inf")
        n_att = round((want - s) * share)
        by_att = torch.topk(att, n_att).indices
        norm[by_att] = float("-inf")
        by_norm = torch.topk(norm, want - s - n_att).indices
        picked.append(torch.cat((torch.arange(s), by_att, by_norm)) + c.start)
    return torch.sort(torch.cat(picked)).values


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_pick_equals_the_per_chunk_reference(ctx_factory, seed):
    ctx = ctx_factory()
    g = torch.Generator().manual_seed(seed)
    n = int(ctx.chunk_positions.numel())
    attention, key_norm = torch.rand(n, generator=g), torch.rand(n, generator=g) + 0.5  # fresh, no ties
    lengths = [c.entry.num_tokens for c in ctx.chunks]
    wants = [int(torch.randint(0, m + 1, (1,), generator=g)) for m in lengths]
    sink, share = [0, 1, 2, 4, 8, 100][seed], [0.75, 0.0, 1.0, 0.5, 0.75, 0.75][seed]
    got = pick_within_chunks(ctx, attention, key_norm, wants, sink, share)
    assert torch.equal(got, reference_pick(ctx, attention, key_norm, wants, sink, share))


def test_global_budget_is_qcfuse_plus_every_chunks_sink(ctx_factory):
    from fusionrag_integrations.fusion.selectors import QCFuseSelector

    ctx = ctx_factory()
    g = torch.Generator().manual_seed(3)
    n = int(ctx.chunk_positions.numel())
    attention, key_norm = torch.rand(n, generator=g), torch.rand(n, generator=g)
    no_sink = pick_global(ctx, attention, key_norm, 30, sink=0, share=0.75)
    qcfuse = QCFuseSelector(critical_layer=5)
    want = set(ctx.chunk_positions[torch.topk(attention, 22).indices].tolist())
    assert want <= set(no_sink.tolist()) and no_sink.numel() == 30 and qcfuse.attention_share == 0.75
    with_sink = pick_global(ctx, attention, key_norm, 30, sink=2, share=0.75)
    assert {c.start + i for c in ctx.chunks for i in range(2)} <= set(with_sink.tolist())
    assert with_sink.numel() == 30 and with_sink.unique().numel() == 30
    same = HybridSelector(critical_layer=5, sink_tokens=0, adaptive=None, budget="global").select(ctx_factory(), 30)
    assert torch.equal(same, qcfuse.select(ctx_factory(), 30))  # no sink, no adaptive ratio: QCFuse itself
    with pytest.raises(InvalidArgumentError):
        HybridSelector(budget="attention")


def test_sinks_only_for_context_aware_chunks_by_default(ctx_factory):
    """sink_scope="context": over standalone KV the default hybrid is QCFuse exactly; a chunk whose KV
    was computed after other text gets its first tokens recomputed, the others do not."""
    from fusionrag_integrations.fusion.selectors import QCFuseSelector

    hybrid = HybridSelector(critical_layer=5, sink_tokens=4, adaptive=None, budget="global")
    assert torch.equal(hybrid.select(ctx_factory(), 30), QCFuseSelector(critical_layer=5).select(ctx_factory(), 30))
    ctx = ctx_factory()
    ctx.chunks[1].entry = dataclasses.replace(ctx.chunks[1].entry, context_id="nbr:0123456789abcdef")
    assert hybrid.sinks(ctx) == [0, 4] + [0] * (len(ctx.chunks) - 2)
    picked = hybrid.select(ctx, 30)
    assert set(range(4)) <= set(per_chunk(ctx, picked)[1]) and picked.unique().numel() == 30
    everywhere = HybridSelector(critical_layer=5, sink_tokens=4, adaptive=None, budget="global", sink_scope="all")
    assert all(set(range(4)) <= set(offsets) for offsets in per_chunk(ctx, everywhere.select(ctx_factory(), 30)))
    with pytest.raises(InvalidArgumentError):
        HybridSelector(sink_scope="first")
