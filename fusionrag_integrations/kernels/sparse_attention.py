"""Sparse-query prefill attention: a subset of queries, each causal by its own absolute position.

Shapes: q [Sq, Hq, D], k/v [Skv, Hkv, D], q_pos int [Sq]. Key j sits at position j;
query i attends to keys j <= q_pos[i]. Queries may come in any order (selected tokens of
fused chunks plus the question). GQA: Hq is a multiple of Hkv; K/V are never expanded.

This is exact causal attention by position. CacheBlend's xformers path and LMCache's
flash-attn path use a bottom-right-aligned mask instead, which lets a selected token see
keys after it; the exact mask is a small fidelity gain and costs nothing here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRITON_HEAD_DIMS = (64, 128)
QUERY_BLOCK = 128  # small blocks of position-sorted queries skip most masked keys (RESULTS.md: sparse attention)


def sparse_query_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    *,
    scale: float | None = None,
    positions_sorted: bool = False,
) -> torch.Tensor:
    """Plain PyTorch reference: SDPA with an explicit boolean mask, one block of queries at a time.

    Queries are visited in position order, so each block only reads keys up to its own
    largest position (the same skipping the Triton kernel does per tile).
    """
    _check_shapes(q, k, v, q_pos)
    out = torch.empty_like(q)
    order = torch.arange(q.shape[0], device=q.device) if positions_sorted else torch.argsort(q_pos)
    key_index = torch.arange(k.shape[0], device=k.device)
    kt, vt = k.transpose(0, 1), v.transpose(0, 1)  # [Hkv, Skv, D]
    for s in range(0, q.shape[0], QUERY_BLOCK):
        rows = order[s : s + QUERY_BLOCK]
        pos = q_pos[rows]
        n_keys = int(pos.max()) + 1  # keys past the block's last position are masked for every query
        mask = key_index[None, :n_keys] <= pos[:, None]  # [block, n_keys]
        o = F.scaled_dot_product_attention(
            q[rows].transpose(0, 1)[None],
            kt[None, :, :n_keys],
            vt[None, :, :n_keys],
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )
        out[rows] = o[0].transpose(0, 1)
    return out


def sparse_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    *,
    scale: float | None = None,
    backend: str = "auto",
    positions_sorted: bool = False,
) -> torch.Tensor:
    """Dispatch: the Triton kernel where it runs (CUDA, or CPU under TRITON_INTERPRET=1), else the reference.

    backend: "auto" | "always" (Triton, error if unavailable) | "never" (reference).
    positions_sorted: a hint that q_pos is ascending (skips a sort); results are correct either way,
    only the skipping of masked key blocks depends on queries with near positions sharing a tile.
    """
    from . import _dispatch

    _check_shapes(q, k, v, q_pos)
    if _dispatch.use_triton(q, backend):
        if q.shape[-1] in TRITON_HEAD_DIMS and q.dtype in (torch.float16, torch.bfloat16, torch.float32):
            from .sparse_attention_launch import sparse_query_attention_triton

            return sparse_query_attention_triton(q, k, v, q_pos, scale=scale, positions_sorted=positions_sorted)
        _dispatch.warn_once(
            f"sparse_query_attention: no Triton kernel for head_dim={q.shape[-1]} / {q.dtype}; "
            "using the PyTorch reference"
        )
    return sparse_query_attention_ref(q, k, v, q_pos, scale=scale, positions_sorted=positions_sorted)


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape:
        raise ValueError(
            f"expected q [Sq,Hq,D], k/v [Skv,Hkv,D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1] or q.shape[2] != k.shape[2]:
        raise ValueError(f"Hq must be a multiple of Hkv and head dims equal: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q_pos.shape != (q.shape[0],):
        raise ValueError(f"q_pos must be [Sq]={q.shape[0]}, got {tuple(q_pos.shape)}")
