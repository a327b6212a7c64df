"""Place a cached chunk into the request's KV cache, re-rotating its keys by a position delta.

RoPE rotations compose, so moving post-RoPE keys from position p to p + delta is one more
rotation by delta: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin per frequency (rotate-half
layout). The delta is the same for every token of a chunk, so one cos/sin vector [D/2]
serves the whole chunk. The Triton kernel reads each key once, rotates in fp32 registers
and writes straight into the cache (one pass each way); the PyTorch version does the same
math in several passes. cos/sin come from the host in float64 -> float32 (exact angles).
"""

from __future__ import annotations

import torch

from . import _dispatch


def rotation(delta: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of delta * inv_freq: [D/2] float32 (angles in float64)."""
    angles = float(delta) * inv_freq.to(torch.float64)
    return angles.cos().float(), angles.sin().float()


def place_rotated_ref(dst: torch.Tensor, src: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """dst[..., :] = src rotated; dst, src: [L, T, H, D]; cos, sin: [D/2] (PyTorch reference)."""
    half = src.shape[-1] // 2
    x = src.float()
    x1, x2 = x[..., :half], x[..., half:]
    dst.copy_(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(dst.dtype))


def place_rotated(
    dst: torch.Tensor, src: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, backend: str = "auto"
) -> None:
    """Dispatch: the Triton kernel on CUDA (or under TRITON_INTERPRET=1), else the reference.

    The kernel needs D/2 a power of two (every supported model: D = 64 or 128)."""
    half = src.shape[-1] // 2
    if _dispatch.use_triton(src, backend) and half & (half - 1) == 0 and src[0].is_contiguous():
        from .rope_gather_triton import place_rotated_triton

        place_rotated_triton(dst, src, cos.to(src.device), sin.to(src.device))
    else:
        place_rotated_ref(dst, src, cos.to(src.device), sin.to(src.device))
