"""A batched decode step (rows of different requests, each with its own cache) gives each row the
logits it gets alone (to rounding: GEMMs over 4 rows may round differently from one), with the
per-row reference and with the Triton
kernel (interpreted on CPU, compiled on a GPU)."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.kernels import _dispatch
from fusionrag_integrations.model.attention import AttentionMode, BatchDecodeAttention
from fusionrag_integrations.model.forward import run_layers
from fusionrag_integrations.runtime.decode_step import EagerDecodeStep
from tests.conftest import tiny_llama

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def prefilled(model, lengths: list[int], seed: int):
    """One cache per request, each prefilled with its own random prompt; the next token of each."""
    g = torch.Generator().manual_seed(seed)
    caches, tokens = [], []
    for n in lengths:
        prompt = torch.randint(0, 512, (n,), generator=g).to(model.device)
        cache = model.new_cache(n + 4)
        model.forward(prompt, torch.arange(n, device=model.device), cache, AttentionMode.CAUSAL_FROM_ZERO, n - 1)
        caches.append(cache)
        tokens.append(int(torch.randint(0, 512, (1,), generator=g)))
    return caches, tokens


def batched_logits(model, caches, tokens, positions, backend: str) -> torch.Tensor:
    attention = BatchDecodeAttention(caches, positions, backend)
    ids = torch.tensor(tokens, device=model.device)
    h, _ = run_layers(model, ids, torch.tensor(positions, device=model.device), attention)
    return model.logits(h)


@pytest.mark.parametrize("backend", ["never", "always"])
def test_batched_step_equals_each_request_alone(backend):
    if backend == "always" and not (_dispatch.triton_available() and (DEVICE == "cuda" or _dispatch.interpret_mode())):
        pytest.skip("needs triton with CUDA or TRITON_INTERPRET=1")
    model = tiny_llama(DEVICE, torch.float32)
    lengths = [37, 5, 80, 21]
    caches, tokens = prefilled(model, lengths, seed=2)
    alone_caches, _ = prefilled(model, lengths, seed=2)
    alone = torch.stack([EagerDecodeStep(model, c)(t, n) for c, t, n in zip(alone_caches, tokens, lengths)])
    together = batched_logits(model, caches, tokens, lengths, backend)
    err = float((together - alone).norm() / alone.norm())
    assert err < 1e-4
    for got, ref, n in zip(caches, alone_caches, lengths):  # the fresh rows written where alone writes them
        assert torch.allclose(got.k[:, : n + 1], ref.k[:, : n + 1], atol=1e-5)
        assert torch.allclose(got.v[:, : n + 1], ref.v[:, : n + 1], atol=1e-5)
