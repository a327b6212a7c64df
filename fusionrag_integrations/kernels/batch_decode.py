"""Batched decode attention: one new token per request, every request with its own KV cache.

Continuous batching runs the next token of every running request in one forward. The GEMMs take
all rows at once; attention cannot, since each row sees only its own cache, and the caches have
different lengths and live in different buffers. Row i: write its fresh key/value at position
positions[i] of its cache, then attend over that cache's positions 0..positions[i].

The reference runs an SDPA per row (exactly what the row computes alone); the Triton kernel does
all rows and heads in one launch, reading each cache through its offset from one base tensor.
"""

from __future__ import annotations

import torch

from .cache_table import CacheTable
from .dense_attention import sdpa
from .sparse_attention import TRITON_HEAD_DIMS


def batch_decode_attention_ref(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    positions: list[int],
) -> torch.Tensor:
    """q [B, Hq, D], k_new/v_new [B, Hkv, D]; keys[i]/values[i] [capacity_i, Hkv, D] (written in place).
    Returns [B, Hq, D]: row i attends to keys[i][: positions[i] + 1] after its write."""
    rows = []
    for i, (k, v, p) in enumerate(zip(keys, values, positions)):
        k[p], v[p] = k_new[i], v_new[i]
        rows.append(sdpa(q[i : i + 1], k[: p + 1], v[: p + 1], causal=False))
    return torch.cat(rows)


def batch_decode_attention(
    q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, table: CacheTable, layer: int
) -> torch.Tensor:
    """The Triton kernel over `table` (the caller checked `triton_supports`): same contract as the
    reference, for layer `layer` of every cache in the table."""
    from .batch_decode_triton import batch_decode_attention_triton

    return batch_decode_attention_triton(q, k_new, v_new, table, layer)


def triton_supports(q: torch.Tensor) -> bool:
    return q.shape[-1] in TRITON_HEAD_DIMS and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
