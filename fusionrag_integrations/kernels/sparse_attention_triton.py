"""Triton sparse-query prefill attention (FlashAttention-style online softmax).

Queries arrive in any order at arbitrary positions; the launcher sorts them by position so
each tile of BLOCK_Q queries spans a compact range of positions. A tile then visits only
the key blocks up to its largest position: blocks every query sees run without a mask,
the few at the tail of the range apply the per-query causal mask. GQA: one program serves
all query heads of one KV head (its BLOCK_Q queries x GROUP heads form the M rows of the
tile), so K/V tiles are loaded once per group and K/V are never expanded in memory.

Few queries over a long cache (the selection probe's question tokens, ~64 queries over 16K
keys) make too few tiles to fill the GPU, and each would walk every key block alone. Then the
key range is also split (flash-decoding): each split writes its normalised partial output
and log-sum-exp, and a small combine step weighs the splits together.
"""

from __future__ import annotations

import triton
import triton.language as tl

RCP_LN2 = 1.4426950408889634  # 1 / ln(2): softmax in base 2


@triton.jit
def _attend_key_range(
    acc,
    l_i,
    m_i,
    q,
    pos,
    k_base,
    v_base,
    stride_ks,
    stride_vs,
    lo,
    hi,
    key_hi,
    qk_scale,
    offs_n,
    offs_d,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,  # the tail blocks: keys past key_hi or past a row's position are masked
    SPLIT: tl.constexpr,  # a row may see no key of its split yet: keep exp2 away from -inf - -inf
    IEEE: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """Online-softmax update of (acc, l_i, m_i) over the key blocks starting in [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + offs_n
        if MASKED:
            k = tl.load(k_base + keys[:, None] * stride_ks + offs_d[None, :], mask=(keys < key_hi)[:, None], other=0.0)
        else:
            k = tl.load(k_base + keys[:, None] * stride_ks + offs_d[None, :])
        if DOT_F32:
            k = k.to(tl.float32)
        if IEEE:
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))
        qk = qk * qk_scale
        if MASKED:
            qk = tl.where(keys[None, :] <= pos[:, None], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        m_sub = m_new
        if SPLIT:
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if MASKED:
            v = tl.load(v_base + keys[:, None] * stride_vs + offs_d[None, :], mask=(keys < key_hi)[:, None], other=0.0)
        else:
            v = tl.load(v_base + keys[:, None] * stride_vs + offs_d[None, :])
        if DOT_F32:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None]
        if IEEE:
            acc += tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc += tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


# counts and position arrays change with every request: specialised on them, a serving engine would compile
# the kernel again (about a second) the first time a request brings a count divisible by 16, or a slice of
# positions starting at an odd index
@triton.jit(do_not_specialize=["n_queries"], do_not_specialize_on_alignment=["QPos", "Order"])
def _sparse_query_attn_fwd(
    Q,
    K,
    V,
    Out,
    Lse,
    QPos,
    Order,  #
    stride_qs,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_os,
    stride_oh,
    stride_osplit,
    stride_lsplit,
    stride_lq,  #
    n_queries,
    qk_scale,
    q_bucket,  # unused here: the autotuner's key (sparse_attention_launch.query_bucket)
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  #
    HEAD_DIM: tl.constexpr,
    IEEE: tl.constexpr,
    DOT_F32: tl.constexpr,
    SORTED: tl.constexpr,
    KEYS_PER_SPLIT: tl.constexpr,  # 0: one program walks all keys; else a multiple of BLOCK_N
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
    pos = tl.load(QPos + q_index, mask=row_valid, other=0).to(tl.int32)  # int64 positions read as they are
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
    offs_n = tl.arange(0, BLOCK_N)
    k_base = K + kv_head * stride_kh
    v_base = V + kv_head * stride_vh
    if KEYS_PER_SPLIT > 0:
        key_lo = tl.program_id(2) * KEYS_PER_SPLIT
        key_hi = tl.minimum(highest + 1, key_lo + KEYS_PER_SPLIT)
        unmasked_hi = tl.minimum(((lowest + 1) // BLOCK_N) * BLOCK_N, key_lo + KEYS_PER_SPLIT)
    else:
        key_lo = 0
        key_hi = highest + 1
        unmasked_hi = ((lowest + 1) // BLOCK_N) * BLOCK_N
    # key blocks below `unmasked_hi` are whole and visible to every row: no load mask, no causal mask
    unmasked_hi = tl.maximum(unmasked_hi, key_lo)
    acc, l_i, m_i = _attend_key_range(
        acc,
        l_i,
        m_i,
        q,
        pos,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        key_lo,
        unmasked_hi,
        key_hi,
        qk_scale,
        offs_n,
        offs_d,
        BLOCK_N,
        False,
        KEYS_PER_SPLIT > 0,
        IEEE,
        DOT_F32,
    )
    acc, l_i, m_i = _attend_key_range(
        acc,
        l_i,
        m_i,
        q,
        pos,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        unmasked_hi,
        key_hi,
        key_hi,
        qk_scale,
        offs_n,
        offs_d,
        BLOCK_N,
        True,
        KEYS_PER_SPLIT > 0,
        IEEE,
        DOT_F32,
    )
    # epilogue
    if KEYS_PER_SPLIT > 0:  # partial result of this split, and its log2-sum-exp2 for the combine
        seen = l_i > 0.0
        out = acc / tl.where(seen, l_i, 1.0)[:, None]
        split = tl.program_id(2)
        tl.store(
            Lse + split * stride_lsplit + q_index * stride_lq + head,
            tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf")),
            mask=row_valid,
        )
        Out += split * stride_osplit
    else:
        out = acc / l_i[:, None]
    tl.store(
        Out + q_index[:, None] * stride_os + head[:, None] * stride_oh + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=row_valid[:, None],
    )


@triton.jit(do_not_specialize=["num_splits"])
def _combine_key_splits(
    Part,
    Lse,
    Out,
    num_splits,
    stride_psplit,
    stride_lsplit,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """One (query, head) row: weigh each split's normalised output by its share of the softmax mass."""
    row = tl.program_id(0)
    split = tl.arange(0, SPLITS_PAD)
    in_range = split < num_splits
    lse = tl.load(Lse + split * stride_lsplit + row, mask=in_range, other=float("-inf"))
    weight = tl.math.exp2(lse - tl.max(lse, axis=0))  # split 0 holds key 0, seen by every query: max is finite
    offs_d = tl.arange(0, HEAD_DIM)
    part = tl.load(
        Part + split[:, None] * stride_psplit + row * HEAD_DIM + offs_d[None, :], mask=in_range[:, None], other=0.0
    )
    out = tl.sum(part * weight[:, None], axis=0) / tl.sum(weight, axis=0)
    tl.store(Out + row * HEAD_DIM + offs_d, out.to(Out.dtype.element_ty))
