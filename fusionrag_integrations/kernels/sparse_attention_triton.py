"""Triton sparse-query prefill attention (FlashAttention-style online softmax).

Queries arrive in any order at arbitrary positions; the launcher sorts them by position so
each tile of BLOCK_Q queries spans a compact range of positions. A tile then visits only
the key blocks up to its largest position: blocks every query sees run without a mask,
the few at the tail of the range apply the per-query causal mask. GQA: one program serves
all query heads of one KV head (its BLOCK_Q queries x GROUP heads form the M rows of the
tile), so K/V tiles are loaded once per group and K/V are never expanded in memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

RCP_LN2 = 1.4426950408889634  # 1 / ln(2): softmax in base 2


@triton.jit
def _sparse_query_attn_fwd(
    Q,
    K,
    V,
    Out,
    QPos,
    Order,  #
    stride_qs,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_os,
    stride_oh,  #
    n_queries,
    qk_scale,  #
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  #
    HEAD_DIM: tl.constexpr,
    IEEE: tl.constexpr,
    DOT_F32: tl.constexpr,
    SORTED: tl.constexpr,
):
    BLOCK_Q: tl.constexpr = BLOCK_M // GROUP_PAD  # GROUP_PAD: the group size rounded up to a power of two
    # heaviest tiles (largest positions) first, so the last wave is not left with the longest ones
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)
    # -- rows of this tile: (query, head-in-group) pairs over position-sorted queries --------
    offs_m = tl.arange(0, BLOCK_M)
    q_slot = tile * BLOCK_Q + offs_m // GROUP_PAD
    head = kv_head * GROUP + offs_m % GROUP_PAD
    row_valid = (q_slot < n_queries) & (offs_m % GROUP_PAD < GROUP)
    if SORTED:  # queries already in position order: no indirection
        q_index = tl.where(row_valid, q_slot, 0)
    else:
        q_index = tl.load(Order + q_slot, mask=row_valid, other=0)
    pos = tl.load(QPos + q_index, mask=row_valid, other=0)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(
        Q + q_index[:, None] * stride_qs + head[:, None] * stride_qh + offs_d[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )
    if DOT_F32:
        q = q.to(tl.float32)
    # -- online softmax state ------------------------------------------------------------------
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lowest = tl.min(tl.where(row_valid, pos, 2147483647), axis=0)
    highest = tl.max(tl.where(row_valid, pos, 0), axis=0)
    unmasked_end = ((lowest + 1) // BLOCK_N) * BLOCK_N  # key blocks below this are visible to every row
    offs_n = tl.arange(0, BLOCK_N)
    k_base = K + kv_head * stride_kh
    v_base = V + kv_head * stride_vh
    for start_n in range(0, highest + 1, BLOCK_N):
        keys = start_n + offs_n
        # -- compute qk (keys past `highest` are masked: they are never read as valid) ----------
        k = tl.load(k_base + keys[:, None] * stride_ks + offs_d[None, :], mask=(keys <= highest)[:, None], other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
        if IEEE:
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))
        qk = qk * qk_scale
        if start_n >= unmasked_end:
            qk = tl.where(keys[None, :] <= pos[:, None], qk, float("-inf"))
        # -- update m_i and l_i ---------------------------------------------------------------
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        # -- update output accumulator -------------------------------------------------------
        v = tl.load(v_base + keys[:, None] * stride_vs + offs_d[None, :], mask=(keys <= highest)[:, None], other=0.0)
        if DOT_F32:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None]
        if IEEE:
            acc += tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc += tl.dot(p.to(v.dtype), v)
        m_i = m_new
    # epilogue
    out = acc / l_i[:, None]
    tl.store(
        Out + q_index[:, None] * stride_os + head[:, None] * stride_oh + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=row_valid[:, None],
    )


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
    ]
]
# Tuned once per (head_dim, GQA group) on the GPU; the interpreter keeps one small tile shape.
_sparse_query_attn_fwd_tuned = triton.autotune(configs=_GPU_CONFIGS, key=["HEAD_DIM", "GROUP_PAD"])(
    _sparse_query_attn_fwd
)


def sparse_query_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    *,
    scale: float | None = None,
    positions_sorted: bool = False,
) -> torch.Tensor:
    """Same contract as sparse_query_attention_ref; D must be 64 or 128 (the dispatcher checks)."""
    Sq, Hq, D = q.shape
    Hkv = k.shape[1]
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1, "head_dim must be contiguous"
    group = Hq // Hkv
    group_pad = triton.next_power_of_2(group)
    out = torch.empty_like(q)
    if Sq == 0:
        return out
    q_pos = q_pos.to(torch.int32)
    order = q_pos if positions_sorted else torch.argsort(q_pos).to(torch.int32)  # unused when sorted
    interpret = q.device.type == "cpu"
    scale = (D**-0.5) if scale is None else scale
    args = (
        q,
        k,
        v,
        out,
        q_pos,
        order,  #
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),  #
        Sq,
        scale * RCP_LN2,
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
    )
    if interpret:
        block_m = 16 * group_pad
        _sparse_query_attn_fwd[(triton.cdiv(Sq, block_m // group_pad), Hkv)](
            *args, **flags, BLOCK_M=block_m, BLOCK_N=16, num_warps=1, num_stages=1
        )
    else:
        grid = lambda meta: (triton.cdiv(Sq, max(1, meta["BLOCK_M"] // group_pad)), Hkv)  # noqa: E731
        _sparse_query_attn_fwd_tuned[grid](*args, **flags)
    return out
