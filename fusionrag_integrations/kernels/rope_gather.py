"""Place a cached chunk into the request's KV cache, re-rotating its keys by a position delta.

RoPE rotations compose, so moving post-RoPE keys from position p to p + delta is one more
rotation by delta: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin per frequency (rotate-half
layout). The delta is the same for every token of a chunk, so one cos/sin vector [D/2]
serves the whole chunk. The Triton kernel reads each key once, rotates in fp32 registers
and writes straight into the cache (one pass each way); the PyTorch version does the same
math in several passes. cos/sin come from the host in float64 -> float32 (exact angles).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _dispatch


def rotation(delta: int | Sequence[int], inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of delta * inv_freq in float32 (angles in float64): [D/2] for one delta, [C, D/2] for C.

    With inv_freq on the host, the cos/sin of every chunk of a request cost no device launch.
    """
    deltas = torch.as_tensor(delta, dtype=torch.float64, device=inv_freq.device)
    angles = deltas[..., None] * inv_freq.to(torch.float64)
    return angles.cos().float(), angles.sin().float()


Values = tuple[torch.Tensor, torch.Tensor]  # (dst, src) of the values, copied unrotated beside the keys


def place_rotated_ref(
    dst: torch.Tensor, src: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, values: Values | None = None
) -> None:
    """dst[..., :] = src rotated; dst, src: [L, T, H, D]; cos, sin: [D/2] (PyTorch reference)."""
    half = src.shape[-1] // 2
    x = src.float()
    x1, x2 = x[..., :half], x[..., half:]
    dst.copy_(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(dst.dtype))
    if values is not None:
        values[0].copy_(values[1])


def place_rotated(
    dst: torch.Tensor,
    src: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    values: Values | None = None,
    backend: str = "auto",
) -> None:
    """Dispatch: the Triton kernel on CUDA (or under TRITON_INTERPRET=1), else the reference.

    values: also copy these (a chunk's V beside its K) in the same pass, one launch per chunk.
    The kernel needs D/2 a power of two (every supported model: D = 64 or 128)."""
    half = src.shape[-1] // 2
    cos, sin = cos.to(src.device), sin.to(src.device)
    dense = src[0].is_contiguous() and (values is None or values[1][0].is_contiguous())
    if _dispatch.use_triton(src, backend) and half & (half - 1) == 0 and dense:
        from .rope_gather_triton import place_rotated_triton

        place_rotated_triton(dst, src, cos, sin, values)
    else:
        place_rotated_ref(dst, src, cos, sin, values)
