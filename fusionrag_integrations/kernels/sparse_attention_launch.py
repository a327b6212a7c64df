"""Launching the sparse-query attention programs (sparse_attention_triton.py): the tile shapes tried by
the autotuner, how many key ranges to split a launch into (flash-decoding, when the query tiles alone
cannot fill the GPU), and the launcher that sorts the queries, runs the programs and combines the splits."""

from __future__ import annotations

import functools

import torch
import triton

from .sparse_attention_triton import RCP_LN2, _combine_key_splits, _sparse_query_attn_fwd

_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
    for m, n, w, st in [
        (128, 64, 8, 2),
        (128, 64, 8, 3),
        (128, 128, 8, 2),
        (128, 64, 4, 3),
        (64, 64, 4, 3),
        (64, 128, 4, 2),
        (256, 64, 8, 2),
        (128, 128, 8, 3),
    ]
]
# Tuned once per (head_dim, GQA group, query bucket) on the GPU; the interpreter keeps one small tile shape.
_sparse_query_attn_fwd_tuned = triton.autotune(configs=_GPU_CONFIGS, key=["HEAD_DIM", "GROUP_PAD", "q_bucket"])(
    _sparse_query_attn_fwd
)

LARGE_QUERY_COUNT = 2048


def query_bucket(n_queries: int) -> int:
    """Which tuning a launch gets: few queries (a short recompute, a step's slice) favour small tiles
    that fill the GPU; thousands (a whole fused prefill) favour the largest tile the shared memory takes.
    Tuned once for every size, the autotuner kept whichever config won at the first size it saw, and
    that config is measurably slower at the other (`benchmarks/sparse_attention.py --sweep`). Two
    buckets, each tuned once: a new query count never tunes again."""
    return int(n_queries >= LARGE_QUERY_COUNT)


MIN_KEYS_PER_SPLIT = 512


def plan_key_splits(n_queries: int, n_keys: int, n_kv_heads: int, group_pad: int, sm_count: int) -> int:
    """How many key ranges to split into: 1 when the query tiles alone fill the GPU, else enough
    programs for about four waves, each split keeping at least MIN_KEYS_PER_SPLIT keys."""
    tiles = triton.cdiv(n_queries, _split_block_m(group_pad) // group_pad) * n_kv_heads
    if tiles >= sm_count or n_keys < 2 * MIN_KEYS_PER_SPLIT:
        return 1
    return max(1, min(triton.cdiv(4 * sm_count, tiles), n_keys // MIN_KEYS_PER_SPLIT))


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _split_block_m(group_pad: int) -> int:
    return max(64, 16 * group_pad)  # at least 16 queries per tile (tl.dot's minimum M per head group)


def sparse_query_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    *,
    scale: float | None = None,
    positions_sorted: bool = False,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Same contract as sparse_query_attention_ref; D must be 64 or 128 (the dispatcher checks).

    num_splits: key ranges per tile (None: `plan_key_splits` on the GPU, 1 in the interpreter).
    """
    Sq, Hq, D = q.shape
    Skv, Hkv = k.shape[0], k.shape[1]
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1, "head_dim must be contiguous"
    group = Hq // Hkv
    group_pad = triton.next_power_of_2(group)
    out = torch.empty_like(q)
    if Sq == 0:
        return out
    order = q_pos if positions_sorted else torch.argsort(q_pos)  # unused when sorted
    interpret = q.device.type == "cpu"
    if num_splits is None:
        num_splits = 1 if interpret else plan_key_splits(Sq, Skv, Hkv, group_pad, _sm_count(q.device))
    block_n = 16 if interpret else 64
    # a power of two (a multiple of block_n): KEYS_PER_SPLIT is a compile-time constant, and one per
    # prompt length would compile the kernel again for every new length (about a second each)
    keys_per_split = max(block_n, triton.next_power_of_2(triton.cdiv(Skv, num_splits))) if num_splits > 1 else 0
    num_splits = triton.cdiv(Skv, keys_per_split) if keys_per_split else 1
    if num_splits > 1:  # partial outputs and log2-sum-exp2 per split, combined below
        target = torch.empty((num_splits, Sq, Hq, D), device=q.device, dtype=torch.float32)
        lse = torch.empty((num_splits, Sq, Hq), device=q.device, dtype=torch.float32)
    else:
        target, lse = out, out  # Lse is never touched without splits
    scale = (D**-0.5) if scale is None else scale
    args = (
        q,
        k,
        v,
        target,
        lse,
        q_pos,
        order,  #
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        target.stride(-3),
        target.stride(-2),
        target.stride(0) if num_splits > 1 else 0,
        lse.stride(0) if num_splits > 1 else 0,
        lse.stride(1) if num_splits > 1 else 0,  #
        Sq,
        scale * RCP_LN2,
        query_bucket(Sq),
    )
    flags = dict(
        GROUP=group,
        GROUP_PAD=group_pad,
        HEAD_DIM=D,
        IEEE=q.dtype == torch.float32 or interpret,
        # Triton 3.9's CPU interpreter computes bf16 tl.dot wrongly (2e10 error on a 16x16 product,
        # fp16 exact): interpreted, bf16 tiles are upcast first. Compiled GPU code runs bf16 natively.
        DOT_F32=interpret and q.dtype == torch.bfloat16,
        SORTED=positions_sorted,
        KEYS_PER_SPLIT=keys_per_split,
    )
    if interpret:
        block_m = 16 * group_pad
        grid = (triton.cdiv(Sq, block_m // group_pad), Hkv, num_splits)
        _sparse_query_attn_fwd[grid](*args, **flags, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=1, num_stages=1)
    elif num_splits > 1:
        block_m = _split_block_m(group_pad)
        grid = (triton.cdiv(Sq, block_m // group_pad), Hkv, num_splits)
        warps = 4 if block_m <= 64 else 8
        _sparse_query_attn_fwd[grid](*args, **flags, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=3)
    else:
        tuned = lambda meta: (triton.cdiv(Sq, max(1, meta["BLOCK_M"] // group_pad)), Hkv, 1)  # noqa: E731
        _sparse_query_attn_fwd_tuned[tuned](*args, **flags)
    if num_splits > 1:
        _combine_key_splits[(Sq * Hq,)](
            target, lse, out, num_splits, target.stride(0), lse.stride(0), triton.next_power_of_2(num_splits), D
        )
    return out
