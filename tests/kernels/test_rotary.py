"""In-place RoPE on the fused QKV output: Triton kernel vs transformers' arithmetic on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.kernels import _dispatch
from fusionrag_integrations.kernels.rotary import apply_rotary_, apply_rotary_ref
from fusionrag_integrations.model.rope import RotaryEmbedding

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not (_dispatch.triton_available() and (DEVICE == "cuda" or _dispatch.interpret_mode())), reason="needs triton"
)


def qkv_and_angles(tokens: int, hq: int, hkv: int, d: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, generator=g).to(DEVICE, dtype)
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, d, 2).double() / d))
    positions = torch.randint(0, 30000, (tokens,), generator=g).to(DEVICE)
    cos, sin = RotaryEmbedding(inv_freq).to(DEVICE).cos_sin(positions, dtype)
    return qkv, cos, sin


@needs_triton
# relative to each element's magnitude: fp32 a few roundings; 16-bit one ulp (one rounding vs three)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2**-7), (torch.float16, 2**-10)])
@pytest.mark.parametrize("tokens, hq, hkv, d", [(1, 4, 1, 64), (13, 6, 2, 64), (37, 8, 2, 128)])
def test_kernel_rotates_q_and_k_in_place_like_the_reference(dtype, tol, tokens, hq, hkv, d):
    qkv, cos, sin = qkv_and_angles(tokens, hq, hkv, d, dtype, seed=tokens * d)
    before = qkv.clone()
    qk = qkv[:, : (hq + hkv) * d].view(tokens, hq + hkv, d)  # a strided view, as the model passes it
    expected = apply_rotary_ref(qk.double(), cos.double(), sin.double())
    got = apply_rotary_(qk, cos, sin, backend="always")
    assert got.data_ptr() == qkv.data_ptr()  # in place
    err = (got.double() - expected).abs() / expected.abs().clamp_min(1.0)
    assert err.max().item() <= tol
    assert (got.double() - before[:, : (hq + hkv) * d].view_as(got).double()).abs().max() > 0.1  # it did rotate
    assert torch.equal(qkv[:, (hq + hkv) * d :], before[:, (hq + hkv) * d :])  # v untouched


def test_reference_path_is_in_place_and_exact():
    qkv, cos, sin = qkv_and_angles(9, 4, 2, 64, torch.float32, seed=3)
    qk = qkv[:, : 6 * 64].view(9, 6, 64)
    expected = apply_rotary_ref(qk.clone(), cos, sin)
    got = apply_rotary_(qk, cos, sin, backend="never")
    assert got.data_ptr() == qkv.data_ptr() and torch.equal(got, expected)
