"""The selection probe replayed from a CUDA graph gives the eager probe's scores."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.fusion.placement import PlacedChunk, build_context, place_chunks
from fusionrag_integrations.fusion.probe import probe_attention
from fusionrag_integrations.fusion.selectors import FusionRAGSelector, QCFuseSelector
from fusionrag_integrations.model.attention import resolve_kernels
from fusionrag_integrations.model.graphs import GraphCache
from tests.conftest import tiny_fused_prompt, tiny_llama

CUDA = torch.cuda.is_available()


def probe_graphs(model) -> GraphCache | None:
    """The graphs a runner over this model would own (None where graphs do not apply)."""
    graphs = GraphCache(model, resolve_kernels("auto", model.device), decode=True, probe=True)
    return graphs if graphs.probe else None


def scores(model, cache, ids, entries, starts, layer: int, graphs=None) -> torch.Tensor:
    backend = resolve_kernels("auto", model.device)
    place_chunks(model, cache, [PlacedChunk(e, s) for e, s in zip(entries, starts)], backend)
    ctx = build_context(model, cache, ids, [PlacedChunk(e, s) for e, s in zip(entries, starts)], 0, backend, graphs)
    return probe_attention(ctx, model, cache, {layer}, full=False)[layer]


def test_no_graphs_on_the_cpu():
    assert probe_graphs(tiny_llama("cpu", torch.float32)) is None


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("question_tokens", [9, 30])  # 15 and 36 fresh tokens: padded to 16 and 48
def test_replayed_probe_equals_the_eager_probe(dtype, tol, question_tokens):
    model = tiny_llama("cuda", dtype)
    last = model.config.num_layers - 1
    ids, entries, starts = tiny_fused_prompt(model, question_tokens=question_tokens)
    cache = model.new_cache(ids.numel() + 50)  # capacity past the prompt: the graph reads it all
    eager = scores(model, cache, ids, entries, starts, last)
    graphs = probe_graphs(model)
    got = [scores(model, cache, ids, entries, starts, last, graphs) for _ in range(4)]  # eager, capture, replay x2
    (captured,) = [c for c in (graphs.get(k) for k in list(graphs._graphs)) if c is not None]
    assert captured.graph is not None
    for s in got:
        assert ((s.float() - eager.float()).norm() / eager.float().norm()).item() < tol
    # the same cache buffers with other chunks placed: the replay reads what is there now
    other_ids, other_entries, _ = tiny_fused_prompt(model, seed=9, question_tokens=question_tokens)
    eager_other = scores(model, cache, other_ids, other_entries, starts, last)
    replayed = scores(model, cache, other_ids, other_entries, starts, last, graphs)
    assert ((replayed.float() - eager_other.float()).norm() / eager_other.float().norm()).item() < tol
    assert ((eager_other.float() - eager.float()).norm() / eager.float().norm()).item() > 10 * tol


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_selectors_pick_the_same_tokens_with_and_without_graphs():
    model = tiny_llama("cuda", torch.float32)
    ids, entries, starts = tiny_fused_prompt(model)
    cache = model.new_cache(ids.numel())
    placed = [PlacedChunk(e, s) for e, s in zip(entries, starts)]
    backend, graphs = resolve_kernels("auto", model.device), probe_graphs(model)
    for selector in (FusionRAGSelector(), QCFuseSelector(1)):
        picks = []
        for graph in (None, graphs, graphs, graphs):
            place_chunks(model, cache, placed, backend)
            picks.append(selector.select(build_context(model, cache, ids, placed, 0, backend, graph), 24))
        assert all(torch.equal(p, picks[0]) for p in picks[1:]), selector.name


def test_cache_capacity_rounds_up_to_the_granule_within_the_window():
    from fusionrag_integrations.model.graphs import CACHE_GRANULE, graph_friendly_capacity

    assert graph_friendly_capacity(1, 10**6) == CACHE_GRANULE
    assert graph_friendly_capacity(CACHE_GRANULE, 10**6) == CACHE_GRANULE
    assert graph_friendly_capacity(CACHE_GRANULE + 1, 10**6) == 2 * CACHE_GRANULE
    assert graph_friendly_capacity(1500, 1800) == 1800  # not past the context window
    assert graph_friendly_capacity(1900, 1800) == 1900  # never below what is needed
