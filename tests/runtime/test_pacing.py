"""Chunked prefill: a prompt computed a piece at a time gives the logits and cache of one pass."""

from __future__ import annotations

import torch

from fusionrag_integrations.model.attention import AttentionMode
from fusionrag_integrations.runtime.pacing import Pacing, paced_forward
from tests.conftest import tiny_llama


def test_pieces_equal_one_pass_and_pause_between_pieces():
    model = tiny_llama("cpu", torch.float32)
    ids = torch.randint(0, 512, (100,), generator=torch.Generator().manual_seed(4))
    positions = torch.arange(100)
    whole = model.new_cache(100)
    expected = model.forward(ids, positions, whole, AttentionMode.CAUSAL_FROM_ZERO, 99)
    pauses = []
    pieces = model.new_cache(100)
    got = paced_forward(model, ids, positions, pieces, Pacing(16, lambda: pauses.append(1)), "never", from_zero=True)
    assert len(pauses) == 6  # 7 pieces of at most 16 tokens, a pause between each two
    assert float((got - expected).norm() / expected.norm()) < 1e-5
    assert torch.allclose(pieces.k, whole.k, atol=1e-5) and torch.allclose(pieces.v, whole.v, atol=1e-5)
    assert not Pacing(100, lambda: None).splits(100) and Pacing(99, lambda: None).splits(100)
