"""Triton batched decode attention (flash-decoding over per-request caches).

One program per (row, KV head, key split): the GROUP query heads of one KV head form the tile's M
rows (padded to 16, tl.dot's minimum), so each K/V tile is loaded once per group. A row's cache is
`Base + offset[layer, row]`: requests keep their own buffers, and one launch serves them all.

The fresh key/value of each row is not read back from the cache: split 0 adds it to its softmax
state from registers and writes it into the cache (no other program reads that position in this
step), so writing and attending take one launch. Every split writes its normalised partial output
and log2-sum-exp2; the sparse-query kernel's combine step weighs them (split 0 always holds the
fresh key, so every row's maximum is finite).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .cache_table import CacheTable
from .sparse_attention_triton import RCP_LN2, _combine_key_splits


@triton.jit(do_not_specialize=["keys_per_split"])
def _batch_decode_fwd(
    Q,
    KNew,
    VNew,
    Base,
    Offsets,  # [2, B] int64 for this layer: K then V element offsets from Base
    Pos,
    Part,
    Lse,
    stride_qb,
    stride_qh,
    stride_nb,
    stride_nh,
    stride_vnb,
    stride_vnh,
    stride_ks,
    stride_kh,
    stride_off,
    stride_psplit,
    stride_lsplit,
    keys_per_split,  # a runtime value: a new split size compiles nothing
    qk_scale,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    IEEE: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    pos = tl.load(Pos + row)  # the fresh token's position: cached keys are 0..pos-1
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    head = kv_head * GROUP + offs_m
    valid = offs_m < GROUP
    q = tl.load(Q + row * stride_qb + head[:, None] * stride_qh + offs_d[None, :], mask=valid[:, None], other=0.0)
    q = q.to(tl.float32) if DOT_F32 else q
    # caches start 512-byte aligned and every stride is a multiple of 16 elements: saying so lets the
    # compiler issue 16-byte loads (an offset read from memory has no known alignment otherwise)
    k_base = Base + tl.multiple_of(tl.load(Offsets + row), 16) + kv_head * stride_kh
    v_base = Base + tl.multiple_of(tl.load(Offsets + stride_off + row), 16) + kv_head * stride_kh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, pos)
    for start in range(lo, hi, BLOCK_N):
        keys = start + offs_n
        inside = (keys < hi)[:, None]
        k = tl.load(k_base + keys[:, None] * stride_ks + offs_d[None, :], mask=inside, other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_ks + offs_d[None, :], mask=inside, other=0.0)
        if DOT_F32:
            k, v = k.to(tl.float32), v.to(tl.float32)
        if IEEE:
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))
        qk = tl.where(keys[None, :] < hi, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))  # finite: the block holds at least one key
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    if split == 0:  # the fresh key and value: attended from registers, then written to the cache
        k_row = tl.load(KNew + row * stride_nb + kv_head * stride_nh + offs_d)
        v_row = tl.load(VNew + row * stride_vnb + kv_head * stride_vnh + offs_d)
        score = tl.sum(q.to(tl.float32) * k_row.to(tl.float32)[None, :], axis=1) * qk_scale
        m_new = tl.maximum(m_i, score)
        p_row = tl.math.exp2(score - m_new)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + p_row
        acc = acc * alpha[:, None] + p_row[:, None] * v_row.to(tl.float32)[None, :]
        m_i = m_new
        tl.store(k_base + pos * stride_ks + offs_d, k_row.to(Base.dtype.element_ty))
        tl.store(v_base + pos * stride_ks + offs_d, v_row.to(Base.dtype.element_ty))
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    rows = row * (GROUP * tl.num_programs(1)) + head  # (row, query head) index into [B, Hq]
    tl.store(Lse + split * stride_lsplit + rows, lse, mask=valid)
    tl.store(Part + split * stride_psplit + rows[:, None] * HEAD_DIM + offs_d[None, :], out, mask=valid[:, None])


# Tuned once per (head dim, group tile) on the GPU, before any CUDA-graph capture (whose first step runs
# eagerly); the interpreter keeps one small tile.
_batch_decode_fwd_tuned = triton.autotune(
    configs=[
        triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=st)
        for n, w, st in [(64, 4, 2), (64, 4, 3), (64, 4, 4), (128, 4, 2), (128, 4, 3), (128, 8, 3), (32, 2, 4)]
    ],
    key=["HEAD_DIM", "BLOCK_M"],
)(_batch_decode_fwd)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan_splits(rows: int, kv_heads: int, max_keys: int, sm_count: int, block_n: int) -> int:
    """Keys per split, a power of two (so it compiles once): about four waves of programs, each split
    keeping at least 256 keys."""
    programs = rows * kv_heads
    splits = max(1, min(triton.cdiv(4 * sm_count, programs), triton.cdiv(max_keys, 256)))
    return max(block_n, triton.next_power_of_2(triton.cdiv(max_keys, splits)))


def batch_decode_attention_triton(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    table: CacheTable,
    layer: int,
    keys_per_split: int | None = None,
) -> torch.Tensor:
    """Same contract as batch_decode_attention_ref, over `table` (keys_per_split: a test's override)."""
    B, Hq, D = q.shape
    Hkv = k_new.shape[1]
    assert q.stride(-1) == 1 and k_new.stride(-1) == 1 and v_new.stride(-1) == 1, "head_dim must be contiguous"
    interpret = q.device.type == "cpu"
    block_n = 16 if interpret else 64
    max_keys = table.max_keys
    keys_per_split = keys_per_split or table.keys_per_split
    if keys_per_split is None:
        sm = 4 if interpret else _sm_count(q.device)
        keys_per_split = plan_splits(B, Hkv, max_keys, sm, block_n)
    splits = triton.cdiv(max_keys, keys_per_split)
    part = torch.empty((splits, B, Hq, D), device=q.device, dtype=torch.float32)
    lse = torch.empty((splits, B, Hq), device=q.device, dtype=torch.float32)
    group = Hq // Hkv
    offsets = table.offsets[layer]
    grid = (B, Hkv, splits)
    args = (
        q,
        k_new,
        v_new,
        table.base,
        offsets,
        table.positions,
        part,
        lse,
        q.stride(0),
        q.stride(1),
        k_new.stride(0),
        k_new.stride(1),
        v_new.stride(0),
        v_new.stride(1),
        table.stride_token,
        table.stride_head,
        offsets.stride(0),
        part.stride(0),
        lse.stride(0),
        keys_per_split,
        D**-0.5 * RCP_LN2,
    )
    flags = dict(
        GROUP=group,
        BLOCK_M=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=D,
        IEEE=q.dtype == torch.float32 or interpret,
        DOT_F32=interpret and q.dtype == torch.bfloat16,
    )
    if interpret:
        _batch_decode_fwd[grid](*args, **flags, BLOCK_N=16, num_warps=1, num_stages=1)
    else:
        _batch_decode_fwd_tuned[grid](*args, **flags)
    out = torch.empty_like(q)
    pad = triton.next_power_of_2(splits)
    _combine_key_splits[(B * Hq,)](part, lse, out, splits, part.stride(0), lse.stride(0), pad, D)
    return out
