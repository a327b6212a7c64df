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
        cache = model.new_cache(n + 8)
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


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_graphed_batch_steps_equal_eager_ones(dtype, tol):
    """Steps of 3 and then 5 requests (padded to graph buckets, caches of different lengths, a step past a
    key-bucket boundary): replayed logits equal eager ones, and the caches end up the same."""
    from fusionrag_integrations.model.graphs import GraphCache
    from fusionrag_integrations.runtime.batch_step import BatchDecodeStep

    model = tiny_llama(DEVICE, dtype)
    step = BatchDecodeStep(model, GraphCache(model, "auto", True, True), "auto")
    lengths = [37, 500, 1020, 90, 7]
    graphed_caches, tokens = prefilled(model, lengths, seed=3)
    eager_caches, _ = prefilled(model, lengths, seed=3)
    for rows in (3, 3, 3, 5, 5):  # a capture, then replays; positions move on (1020 -> 1022 crosses 1024 keys)
        positions = list(lengths[:rows])
        got = step(graphed_caches[:rows], tokens[:rows], positions).float()
        ref = step._eager(eager_caches[:rows], tokens[:rows], positions).float()
        assert float((got - ref).norm() / ref.norm()) < tol
        lengths[:rows] = [n + 1 for n in lengths[:rows]]
    assert step.replays >= 2
    for got, ref, n in zip(graphed_caches, eager_caches, lengths):
        assert torch.allclose(got.k[:, :n].float(), ref.k[:, :n].float(), atol=tol)
