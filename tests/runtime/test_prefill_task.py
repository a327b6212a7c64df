"""A prefill cut into slices (the step loop's token budget) computes what one pass computes: fused
(every selector, slices of any size) and plain, on fresh random weights and prompts (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.config import FusionConfig
from fusionrag_integrations.fusion.layout import Layout
from fusionrag_integrations.fusion.placement import PlacedChunk
from fusionrag_integrations.fusion.recompute import fused_prefill
from fusionrag_integrations.fusion.selectors import make_selector
from fusionrag_integrations.model.attention import AttentionMode
from fusionrag_integrations.runtime.prefill_task import PrefillTask
from fusionrag_integrations.store.prefix_cache import PrefixCache
from tests.conftest import tiny_fused_prompt, tiny_llama


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def sliced(model, layout: Layout, selector, ratio: float, budget: int):
    task = PrefillTask(model, model.new_cache(len(layout.token_ids)), layout, selector, ratio, PrefixCache(0),
                       "never", None)  # fmt: skip
    logits, slices = None, 0
    while logits is None:
        logits = task.run(budget)
        slices += 1
    return logits, task, slices


@pytest.mark.parametrize("name", ["hybrid", "qcfuse", "epic", "fusionrag", "none", "full", "cacheblend"])
@pytest.mark.parametrize("budget", [1, 7, 32, 10_000])
def test_a_sliced_fused_prefill_equals_one_pass(name, budget):
    model = tiny_llama("cpu", torch.float32)
    ids, entries, starts = tiny_fused_prompt(model, seed=budget)
    placed = [PlacedChunk(e, s) for e, s in zip(entries, starts)]
    selector = make_selector(name, FusionConfig(critical_layer=1))
    cache = model.new_cache(ids.numel())
    ref, ref_selected, _ = fused_prefill(model, cache, ids, placed, selector, 0.2)
    layout = Layout(ids.tolist(), placed, [True] * len(placed))
    got, task, slices = sliced(model, layout, make_selector(name, FusionConfig(critical_layer=1)), 0.2, budget)
    assert torch.equal(task.selected.sort().values, ref_selected.sort().values)
    assert rel(got, ref) < 1e-4
    written = torch.cat([torch.arange(0, 6), task.selected, torch.tensor([ids.numel() - 1])])  # fresh + selected
    assert rel(task.cache.k[:, written], cache.k[:, written]) < 1e-4
    if name != "cacheblend" and budget < task.total:  # cacheblend decides inside its pass: one slice
        assert slices == -(-task.total // budget)


@pytest.mark.parametrize("budget", [1, 16, 10_000])
def test_a_sliced_plain_prefill_equals_one_pass(budget):
    model = tiny_llama("cpu", torch.float32)
    ids = torch.randint(0, 512, (90,), generator=torch.Generator().manual_seed(budget))
    cache = model.new_cache(ids.numel())
    ref = model.forward(ids, torch.arange(ids.numel()), cache, AttentionMode.CAUSAL_FROM_ZERO, ids.numel() - 1)
    got, task, slices = sliced(model, Layout(ids.tolist()), None, 0.2, budget)
    assert rel(got, ref) < 1e-4 and rel(task.cache.k, cache.k) < 1e-4 and slices == -(-90 // budget)
