"""The fused prefill on the kernels' path (rotary, place + re-rotate, sparse attention, silu * mul)
equals the PyTorch reference path: on the GPU, or on the CPU under TRITON_INTERPRET=1."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.fusion.placement import PlacedChunk
from fusionrag_integrations.fusion.recompute import fused_prefill
from fusionrag_integrations.fusion.selectors import CacheBlendSelector, FusionRAGSelector
from fusionrag_integrations.kernels import _dispatch
from tests.conftest import tiny_fused_prompt, tiny_llama

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not (_dispatch.triton_available() and (DEVICE == "cuda" or _dispatch.interpret_mode())), reason="needs triton"
)


@needs_triton
@pytest.mark.parametrize("selector", [FusionRAGSelector(), CacheBlendSelector(1)])
def test_fused_prefill_on_the_kernels_path_matches_the_reference_path(selector):
    model = tiny_llama(DEVICE, torch.float32)
    ids, entries, starts = tiny_fused_prompt(model)
    runs = {}
    for backend in ("never", "always"):
        cache = model.new_cache(ids.numel())
        placed = [PlacedChunk(e, s) for e, s in zip(entries, starts)]
        logits, selected, _ = fused_prefill(
            model, cache, ids, placed, selector, 0.2, backend=backend
        )  # no graphs: test_probe_graph.py
        runs[backend] = (logits, selected, cache)
    (ref, ref_sel, ref_cache), (got, got_sel, got_cache) = runs["never"], runs["always"]
    assert torch.equal(ref_sel, got_sel) and ref_sel.numel() == round(0.2 * 120)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-4
    assert ((got_cache.k - ref_cache.k).norm() / ref_cache.k.norm()).item() < 1e-4
    assert ((got_cache.v - ref_cache.v).norm() / ref_cache.v.norm()).item() < 1e-4
