"""The Triton sparse-query kernel against the PyTorch reference on fresh random inputs.

On CPU this runs the real kernel under TRITON_INTERPRET=1 (set in tests/conftest.py) at
small sizes; on a CUDA machine the same tests run compiled, plus real-size cases.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fusionrag_integrations.kernels import _dispatch, sparse_attention_launch
from fusionrag_integrations.kernels.sparse_attention import sparse_query_attention, sparse_query_attention_ref
from fusionrag_integrations.kernels.sparse_attention_launch import plan_key_splits, sparse_query_attention_triton

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(
    not (_dispatch.triton_available() and (CUDA or _dispatch.interpret_mode())),
    reason="needs triton with CUDA or TRITON_INTERPRET=1",
)


def positions(kind: str, n_q: int, n_kv: int, g: torch.Generator) -> torch.Tensor:
    if kind == "sorted":
        return torch.sort(torch.randperm(n_kv, generator=g)[:n_q]).values
    if kind == "shuffled":
        return torch.randperm(n_kv, generator=g)[:n_q]
    if kind == "clustered":  # a run of neighbours plus the tail (a chunk's first tokens + the question)
        start = int(torch.randint(0, n_kv - n_q, (1,), generator=g))
        pos = torch.cat((torch.arange(start, start + n_q // 2), torch.arange(n_kv - (n_q - n_q // 2), n_kv)))
        return pos[torch.randperm(n_q, generator=g)]
    if kind == "with_zero":
        pos = torch.randperm(n_kv, generator=g)[:n_q]
        pos[0] = 0
        return pos
    raise ValueError(kind)


def random_case(n_q, n_kv, hq, hkv, d, dtype, kind, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_q, hq, d, generator=g)
    k = torch.randn(n_kv, hkv, d, generator=g)
    v = torch.randn(n_kv, hkv, d, generator=g)
    pos = positions(kind, n_q, n_kv, g)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype), v.to(DEVICE, dtype), pos.to(DEVICE)


def check(q, k, v, pos, tol):
    got = sparse_query_attention(q, k, v, pos, backend="always")
    ref = sparse_query_attention_ref(q.double(), k.double(), v.double(), pos).to(q.dtype)
    assert torch.isfinite(got).all()
    err = (got.double() - ref.double()).abs().max().item()
    rel = ((got.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < tol, (err, rel)
    return err


SMALL = list(
    itertools.product([(4, 4), (4, 1), (8, 1), (9, 3)], [64, 128], ["sorted", "shuffled", "clustered", "with_zero"])
)


@needs_triton
@pytest.mark.parametrize("heads, d, kind", SMALL)
def test_kernel_matches_reference_fp32_small(heads, d, kind):
    hq, hkv = heads
    q, k, v, pos = random_case(n_q=13, n_kv=47, hq=hq, hkv=hkv, d=d, dtype=torch.float32, kind=kind, seed=hq * 100 + d)
    check(q, k, v, pos, tol=1e-4)


@needs_triton
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("heads", [(8, 1), (8, 8), (32, 4)])
def test_kernel_matches_reference_half_precision(dtype, tol, heads):
    hq, hkv = heads
    q, k, v, pos = random_case(n_q=21, n_kv=75, hq=hq, hkv=hkv, d=64, dtype=dtype, kind="shuffled", seed=hkv)
    check(q, k, v, pos, tol=tol)


@needs_triton
def test_query_at_position_zero_sees_only_key_zero():
    q, k, v, _ = random_case(n_q=3, n_kv=40, hq=4, hkv=4, d=64, dtype=torch.float32, kind="sorted", seed=7)
    pos = torch.tensor([0, 39, 0], device=DEVICE)
    out = sparse_query_attention(q, k, v, pos, backend="always")
    expanded_v0 = v[0]  # softmax over one key is 1: output is that key's value
    assert torch.allclose(out[0], expanded_v0, atol=1e-5) and torch.allclose(out[2], expanded_v0, atol=1e-5)


@pytest.mark.skipif(not CUDA, reason="real sizes: GPU only")
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-4)])
@pytest.mark.parametrize("heads, d", [((32, 8), 128), ((32, 32), 64), ((28, 4), 128)])
@pytest.mark.parametrize("kind", ["sorted", "shuffled", "clustered", "with_zero"])
def test_kernel_matches_reference_real_sizes(dtype, tol, heads, d, kind):
    hq, hkv = heads
    q, k, v, pos = random_case(n_q=2401, n_kv=16383, hq=hq, hkv=hkv, d=d, dtype=dtype, kind=kind, seed=d + hq)
    check(q, k, v, pos, tol=tol)


def test_reference_matches_naive_softmax_loop():
    """The reference itself, against the definition, with GQA and unsorted positions."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(5, 6, 8, generator=g), torch.randn(11, 2, 8, generator=g), torch.randn(11, 2, 8, generator=g)
    pos = torch.tensor([10, 0, 4, 7, 3])
    got = sparse_query_attention_ref(q, k, v, pos)
    for i, p in enumerate(pos.tolist()):
        for h in range(6):
            w = torch.softmax(k[: p + 1, h // 3] @ q[i, h] / math.sqrt(8), dim=0)
            assert torch.allclose(got[i, h], w @ v[: p + 1, h // 3], atol=1e-5)


def test_unsupported_head_dim_falls_back_to_reference_with_a_warning(monkeypatch):
    monkeypatch.setattr(_dispatch, "_warned", set())
    monkeypatch.setattr(_dispatch, "use_triton", lambda t, backend="auto": True)
    q, k, v, pos = torch.randn(3, 2, 32), torch.randn(9, 2, 32), torch.randn(9, 2, 32), torch.tensor([8, 2, 5])
    with pytest.warns(RuntimeWarning, match="head_dim=32"):
        out = sparse_query_attention(q, k, v, pos)
    assert torch.allclose(out, sparse_query_attention_ref(q, k, v, pos))


def test_dispatch_rules(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.use_triton(cpu, "never") is False
    assert _dispatch.use_triton(cpu, "auto") is _dispatch.triton_available()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _dispatch.use_triton(cpu, "auto") is False
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        _dispatch.use_triton(cpu, "always")


@needs_triton
@pytest.mark.parametrize("kind", ["sorted", "shuffled"])
def test_sorted_hint_is_correct_for_any_order(kind):
    """positions_sorted only skips a sort: an unsorted input under the hint must still be exact."""
    q, k, v, pos = random_case(n_q=19, n_kv=60, hq=8, hkv=2, d=64, dtype=torch.float32, kind=kind, seed=11)
    got = sparse_query_attention(q, k, v, pos, backend="always", positions_sorted=True)
    ref = sparse_query_attention_ref(q.double(), k.double(), v.double(), pos)
    assert (got.double() - ref).abs().max().item() < 1e-4


@needs_triton
@pytest.mark.parametrize("heads, d", [((4, 1), 64), ((9, 3), 128)])
@pytest.mark.parametrize("num_splits", [2, 3, 7])
@pytest.mark.parametrize("kind", ["sorted", "shuffled", "with_zero"])
def test_split_keys_match_reference(heads, d, num_splits, kind):
    """Key ranges split over programs (few queries, long cache) combine to the same softmax; some
    queries see no key of a split at all (positions below its range)."""
    hq, hkv = heads
    q, k, v, pos = random_case(n_q=21, n_kv=203, hq=hq, hkv=hkv, d=d, dtype=torch.float32, kind=kind, seed=num_splits)
    got = sparse_query_attention_triton(q, k, v, pos, num_splits=num_splits)
    ref = sparse_query_attention_ref(q.double(), k.double(), v.double(), pos)
    assert torch.isfinite(got).all()
    assert ((got.double() - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.skipif(not CUDA, reason="GPU only")
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-4)])
@pytest.mark.parametrize("n_q", [1, 64, 80])
def test_probe_sized_calls_split_and_match_reference(dtype, tol, n_q):
    """The selection probe's shape: a question's tokens at the end of a 16K cache."""
    assert plan_key_splits(n_q, 16384, 8, 4, 132) > 1
    g = torch.Generator().manual_seed(n_q)
    q, k, v = (torch.randn(n, h, 128, generator=g).to(DEVICE, dtype) for n, h in ((n_q, 32), (16384, 8), (16384, 8)))
    pos = torch.arange(16384 - n_q, 16384, device=DEVICE)
    check(q, k, v, pos, tol=tol)


def test_split_plan():
    assert plan_key_splits(2400, 16384, 8, 4, 132) == 1  # enough query tiles: no split
    assert plan_key_splits(64, 600, 8, 4, 132) == 1  # short cache: no split
    splits = plan_key_splits(64, 16384, 8, 4, 132)
    assert 2 <= splits <= 16384 // 512


def test_short_and_long_launches_are_tuned_apart():
    """A short recompute and a whole fused prefill want different tiles: the autotuner keys on the
    query bucket, so the config tuned at one size is not reused at the other."""
    bucket = sparse_attention_launch.query_bucket
    assert bucket(1) == bucket(1000) == bucket(2047) == 0
    assert bucket(2048) == bucket(2800) == bucket(33000) == 1
    assert "q_bucket" in sparse_attention_launch._sparse_query_attn_fwd_tuned.keys
