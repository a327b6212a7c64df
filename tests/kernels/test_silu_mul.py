"""The fused silu(gate) * up kernel against PyTorch on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.kernels import _dispatch
from fusionrag_integrations.kernels.silu_mul import silu_mul, silu_mul_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not (_dispatch.triton_available() and (DEVICE == "cuda" or _dispatch.interpret_mode())),
    reason="needs triton with CUDA or TRITON_INTERPRET=1",
)


@needs_triton
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3), (torch.float16, 1e-3)])
@pytest.mark.parametrize("rows, width", [(1, 2 * 96), (7, 2 * 200), (33, 2 * 64)])
def test_kernel_matches_reference(dtype, tol, rows, width):
    g = torch.Generator().manual_seed(rows * width)
    gate_up = (torch.randn(rows, width, generator=g) * 3).to(DEVICE, dtype)
    got = silu_mul(gate_up, backend="always")
    ref = silu_mul_ref(gate_up.double())
    assert got.shape == (rows, width // 2) and got.dtype == dtype
    assert ((got.double() - ref).norm() / ref.norm()).item() < tol


def test_reference_is_silu_of_gate_times_up():
    gate_up = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    gate, up = gate_up[:, :4], gate_up[:, 4:]
    assert torch.allclose(silu_mul(gate_up, backend="never"), gate * torch.sigmoid(gate) * up, atol=1e-6)
