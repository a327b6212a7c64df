"""Fused re-rotate + place: Triton kernel vs reference vs a fresh RoPE at the new position."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.kernels import _dispatch
from fusionrag_integrations.kernels.rope_gather import place_rotated, place_rotated_ref, rotation
from fusionrag_integrations.kernels.rotary import apply_rotary_ref as apply_rotary
from fusionrag_integrations.model.rope import RotaryEmbedding

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not (_dispatch.triton_available() and (DEVICE == "cuda" or _dispatch.interpret_mode())), reason="needs triton"
)


def rope(d: int) -> RotaryEmbedding:
    return RotaryEmbedding(1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d)))


@pytest.mark.parametrize("d", [64, 128])
def test_reference_equals_rope_at_the_new_position(d):
    """Rotating keys computed at p by delta equals rotating the raw keys at p + delta."""
    r = rope(d)
    raw = torch.randn(3, 11, 2, d, dtype=torch.float64)
    start, delta = 5, 1234
    at = lambda p0: apply_rotary(raw, *[c.unsqueeze(0) for c in r.cos_sin(torch.arange(p0, p0 + 11), torch.float64)])  # noqa: E731
    cached, expected = at(start), at(start + delta)
    out = torch.empty_like(cached)
    cos, sin = rotation(delta, r.inv_freq)
    place_rotated_ref(out, cached, cos.double(), sin.double())
    assert (out - expected).abs().max().item() < 1e-5


@needs_triton
# tolerance relative to each element's magnitude: fp32 a few roundings; bf16 one ulp (2^-7: FMA vs mul + add)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2**-7)])
@pytest.mark.parametrize("d, heads, tokens", [(64, 3, 13), (128, 8, 33)])
def test_kernel_matches_reference_into_a_cache_slice(dtype, tol, d, heads, tokens):
    g = torch.Generator().manual_seed(d + tokens)
    src = torch.randn(4, tokens, heads, d, generator=g).to(DEVICE, dtype)
    cache = torch.randn(4, tokens + 40, heads, d, generator=g).to(DEVICE, dtype)
    before = cache.clone()
    cos, sin = rotation(777, rope(d).inv_freq)
    place_rotated(cache[:, 20 : 20 + tokens], src, cos, sin)
    ref = torch.empty_like(src)
    place_rotated_ref(ref, src, cos.to(DEVICE), sin.to(DEVICE))
    got = cache[:, 20 : 20 + tokens].float()
    assert ((got - ref.float()).abs() / ref.float().abs().clamp_min(1.0)).max().item() <= tol
    assert torch.equal(cache[:, :20], before[:, :20]) and torch.equal(cache[:, 20 + tokens :], before[:, 20 + tokens :])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_copies_values_beside_the_rotated_keys(dtype):
    g = torch.Generator().manual_seed(11)
    k_src, v_src = (torch.randn(3, 21, 2, 64, generator=g).to(DEVICE, dtype) for _ in range(2))
    k_cache, v_cache = (torch.randn(3, 60, 2, 64, generator=g).to(DEVICE, dtype) for _ in range(2))
    v_before = v_cache.clone()
    cos, sin = rotation(-5, rope(64).inv_freq)
    place_rotated(k_cache[:, 30:51], k_src, cos, sin, values=(v_cache[:, 30:51], v_src), backend="always")
    ref = torch.empty_like(k_src)
    place_rotated_ref(ref, k_src, cos.to(DEVICE), sin.to(DEVICE))
    assert ((k_cache[:, 30:51].float() - ref.float()).abs() / ref.float().abs().clamp_min(1.0)).max() <= 2**-7
    assert torch.equal(v_cache[:, 30:51], v_src)
    assert torch.equal(v_cache[:, :30], v_before[:, :30]) and torch.equal(v_cache[:, 51:], v_before[:, 51:])


def test_batched_rotation_equals_one_delta_at_a_time():
    inv_freq = rope(128).inv_freq
    cos, sin = rotation([0, 7, -300, 40000], inv_freq)
    assert cos.shape == (4, 64)
    for i, delta in enumerate([0, 7, -300, 40000]):
        c, s = rotation(delta, inv_freq)
        assert torch.equal(cos[i], c) and torch.equal(sin[i], s)
