"""A mixed step (runtime/packed_step.py) computes what its parts compute apart: prefill slices of several
requests (fused and plain, first and later slices) and decode rows in one forward give the same logits
and write the same K/V as each part run alone (fresh random weights and prompts, fp32, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from fusionrag_integrations.config import FusionConfig
from fusionrag_integrations.fusion.layout import Layout
from fusionrag_integrations.fusion.placement import PlacedChunk
from fusionrag_integrations.fusion.selectors import make_selector
from fusionrag_integrations.model.attention import AttentionMode
from fusionrag_integrations.model.graphs import GraphCache
from fusionrag_integrations.runtime.batch_step import BatchDecodeStep
from fusionrag_integrations.runtime.packed_step import packed_step
from fusionrag_integrations.runtime.prefill_task import PrefillTask
from fusionrag_integrations.store.prefix_cache import PrefixCache
from tests.conftest import tiny_fused_prompt, tiny_llama


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


class Row:
    """A decoding request as the packed step sees it (DecodeState's fields it reads)."""

    def __init__(self, model, seed: int, length: int) -> None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 512, (length,), generator=g)
        self.cache = model.new_cache(length + 200)  # room for a decode step per slice
        model.forward(ids, torch.arange(length), self.cache, AttentionMode.CAUSAL_FROM_ZERO, length - 1)
        self.pre = self
        self.token, self.position = int(torch.randint(0, 512, (1,), generator=g)), length


def tasks(model, seed: int) -> list[PrefillTask]:
    """A fused prefill (hybrid: a probe, then recompute) and a plain one, each on a fresh random prompt."""
    ids, entries, starts = tiny_fused_prompt(model, seed=seed)
    placed = [PlacedChunk(e, s) for e, s in zip(entries, starts)]
    fused = Layout(ids.tolist(), placed, [True] * len(placed))
    plain = Layout(torch.randint(0, 512, (70,), generator=torch.Generator().manual_seed(seed)).tolist())
    selector = make_selector("hybrid", FusionConfig(critical_layer=1))
    out = []
    for layout, sel in ((fused, selector), (plain, None)):
        out.append(PrefillTask(model, model.new_cache(len(layout.token_ids)), layout, sel, 0.2, PrefixCache(0),
                               "never", None))  # fmt: skip
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("budget", [9, 10_000])
def test_a_mixed_step_equals_its_parts_apart(seed, budget):
    torch.manual_seed(seed)
    model = tiny_llama("cpu", torch.float32)
    mixed, apart = tasks(model, seed), tasks(model, seed)
    rows_mixed = [Row(model, seed * 10 + i, 20 + 13 * i) for i in range(3)]
    rows_apart = copy.deepcopy(rows_mixed)
    step = BatchDecodeStep(model, GraphCache(model, "never", False, False), "never")
    firsts_mixed: list = [None, None]
    firsts_apart: list = [None, None]
    while any(t.remaining for t in mixed):
        live = [i for i, t in enumerate(mixed) if t.remaining]
        result = packed_step(model, [(mixed[i], budget) for i in live], rows_mixed, "never")
        for i, logits in zip(live, result.first_logits):
            firsts_mixed[i] = logits if logits is not None else firsts_mixed[i]
        for i in live:
            logits = apart[i].run(budget)
            firsts_apart[i] = logits if logits is not None else firsts_apart[i]
        decoded = step([r.cache for r in rows_apart], [r.token for r in rows_apart], [r.position for r in rows_apart])
        assert result.decode_logits.shape == decoded.shape and rel(result.decode_logits, decoded) < 1e-5
        for r_mixed, r_apart, row in zip(rows_mixed, rows_apart, decoded):  # feed the same next token to both
            r_mixed.token = r_apart.token = int(row.argmax())
            r_mixed.position = r_apart.position = r_mixed.position + 1
    for got, ref, task_m, task_a in zip(firsts_mixed, firsts_apart, mixed, apart):
        assert got is not None and rel(got, ref) < 1e-5
        n = task_m.n
        assert rel(task_m.cache.k[:, :n], task_a.cache.k[:, :n]) < 1e-5
        assert rel(task_m.cache.v[:, :n], task_a.cache.v[:, :n]) < 1e-5
    for r_mixed, r_apart in zip(rows_mixed, rows_apart):
        end = r_mixed.position
        assert rel(r_mixed.cache.k[:, :end], r_apart.cache.k[:, :end]) < 1e-5


def test_a_step_of_slices_alone_needs_no_decode_rows():
    model = tiny_llama("cpu", torch.float32)
    mixed, apart = tasks(model, 7), tasks(model, 7)
    result = packed_step(model, [(t, 10_000) for t in mixed], [], "never")
    assert result.decode_logits is None
    for got, task in zip(result.first_logits, apart):
        assert rel(got, task.run(10_000)) < 1e-5
