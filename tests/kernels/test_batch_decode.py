"""The batched decode kernel against the per-row PyTorch reference on fresh random caches.

On CPU the real kernel runs under TRITON_INTERPRET=1 (tests/conftest.py) at small sizes; on a GPU
the same tests run compiled, plus a real-size case (8B shape: 32/8 heads, head dim 128, 4K keys).
"""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.kernels import _dispatch
from fusionrag_integrations.kernels.batch_decode import batch_decode_attention_ref
from fusionrag_integrations.kernels.cache_table import CacheTable

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(
    not (_dispatch.triton_available() and (CUDA or _dispatch.interpret_mode())),
    reason="needs triton with CUDA or TRITON_INTERPRET=1",
)


def random_batch(capacities, positions, hq, hkv, d, dtype, seed, layers=2):
    """Caches [L, capacity, Hkv, D] of different sizes (separate buffers), queries and fresh K/V."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(DEVICE, dtype)  # noqa: E731
    k_caches = [rand(layers, c, hkv, d) for c in capacities]
    v_caches = [rand(layers, c, hkv, d) for c in capacities]
    b = len(positions)
    return rand(b, hq, d), rand(b, hkv, d), rand(b, hkv, d), k_caches, v_caches


def run_both(capacities, positions, hq, hkv, d, dtype, seed, layer=1, keys_per_split=None):
    from fusionrag_integrations.kernels.batch_decode_triton import batch_decode_attention_triton

    q, k_new, v_new, k_caches, v_caches = random_batch(capacities, positions, hq, hkv, d, dtype, seed)
    ref_k, ref_v = [c.clone() for c in k_caches], [c.clone() for c in v_caches]
    expected = batch_decode_attention_ref(q, k_new, v_new, [c[layer] for c in ref_k], [c[layer] for c in ref_v],
                                          positions)  # fmt: skip
    table = CacheTable.of(k_caches, v_caches, positions)
    got = batch_decode_attention_triton(q, k_new, v_new, table, layer, keys_per_split)
    return got, expected, (k_caches, v_caches), (ref_k, ref_v)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("keys_per_split", [None, 16, 32])
@pytest.mark.parametrize(("hq", "hkv"), [(9, 3), (8, 2), (4, 4)])
def test_matches_reference_fp32(hq, hkv, keys_per_split):
    capacities = [40, 97, 64, 130]
    positions = [0, 96, 17, 129]  # the first token, a full cache, a short one, past a split boundary
    got, expected, caches, ref_caches = run_both(capacities, positions, hq, hkv, 64, torch.float32, seed=hq + hkv)
    assert rel_err(got, expected) < 1e-4
    for mine, ref in zip(caches[0] + caches[1], ref_caches[0] + ref_caches[1]):
        assert torch.equal(mine, ref), "the fresh K/V rows are written where the reference writes them"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference_half(dtype):
    capacities = [200, 33, 150]
    positions = [150, 32, 77]
    got, expected, caches, ref_caches = run_both(capacities, positions, 8, 2, 64, dtype, seed=7, keys_per_split=32)
    assert rel_err(got, expected) < 2e-2
    assert all(torch.equal(a, b) for a, b in zip(caches[0], ref_caches[0]))


def test_rows_do_not_see_each_other():
    """A row's output depends on its own cache only: changing another row's cache changes nothing."""
    capacities, positions = [50, 50], [40, 30]
    got, _, caches, _ = run_both(capacities, positions, 8, 2, 64, torch.float32, seed=3)
    from fusionrag_integrations.kernels.batch_decode_triton import batch_decode_attention_triton

    q, k_new, v_new, _, _ = random_batch(capacities, positions, 8, 2, 64, torch.float32, seed=3)
    k_caches, v_caches = caches
    k_caches[1][1, :30] += 5.0  # row 1's cache, before its position
    again = batch_decode_attention_triton(q, k_new, v_new, CacheTable.of(k_caches, v_caches, positions), 1)
    assert torch.equal(again[0], got[0])
    assert rel_err(again[1], got[1]) > 1e-3


def test_mismatched_strides_rejected():
    k = [torch.zeros(2, 8, 2, 64), torch.zeros(2, 8, 4, 32)]
    with pytest.raises(ValueError, match="strides"):
        CacheTable.of(k, k, [1, 1])


@pytest.mark.skipif(not CUDA, reason="real-size case: GPU only")
def test_real_size_8b_shape():
    capacities = [4096, 1500, 4096 + 64, 300, 2048, 4000, 64, 3000]
    positions = [4095, 1499, 4100, 12, 2047, 3999, 63, 1]
    got, expected, caches, ref_caches = run_both(capacities, positions, 32, 8, 128, torch.bfloat16, seed=11)
    assert rel_err(got, expected) < 2e-2
    assert all(torch.equal(a, b) for a, b in zip(caches[0], ref_caches[0]))
