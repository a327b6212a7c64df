"""Triton kernel for rope_gather.place_rotated: one read of the cached keys, one write into the cache."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PLACE_TILE = (64, 4)  # (key rows a program, warps) on the GPU


@triton.jit(do_not_specialize=["n_rows"])  # the chunk length changes by chunk: one compile for all
def _place_rotated_kernel(
    Dst,
    Src,
    Cos,
    Sin,
    DstV,
    SrcV,  #
    stride_dl,
    stride_sl,
    stride_dvl,
    stride_svl,  #
    n_rows,  # T * H rows of one layer (rows are contiguous inside a token)
    HALF: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    COPY_V: tl.constexpr,
):
    layer = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    valid = rows < n_rows
    offs = tl.arange(0, HALF)
    # within a layer a (token, head) row sits at token * stride_t + head * HALF * 2; heads are contiguous
    src = Src + layer * stride_sl + rows[:, None] * (2 * HALF) + offs[None, :]
    dst = Dst + layer * stride_dl + rows[:, None] * (2 * HALF) + offs[None, :]
    x1 = tl.load(src, mask=valid[:, None], other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=valid[:, None], other=0.0).to(tl.float32)
    cos = tl.load(Cos + offs)[None, :]
    sin = tl.load(Sin + offs)[None, :]
    tl.store(dst, (x1 * cos - x2 * sin).to(Dst.dtype.element_ty), mask=valid[:, None])
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(Dst.dtype.element_ty), mask=valid[:, None])
    if COPY_V:
        row_offs = rows[:, None] * (2 * HALF) + tl.arange(0, 2 * HALF)[None, :]
        v = tl.load(SrcV + layer * stride_svl + row_offs, mask=valid[:, None])
        tl.store(DstV + layer * stride_dvl + row_offs, v, mask=valid[:, None])


def place_rotated_triton(
    dst: torch.Tensor,
    src: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    values: tuple[torch.Tensor, torch.Tensor] | None = None,
    tile: tuple[int, int] | None = None,
) -> None:
    """dst, src (and values' dst, src): [L, T, H, D] with (T, H, D) dense inside each layer; cos, sin: [D/2] float32.
    tile: (rows a program, warps) instead of the default (benchmarks/placement.py sweeps them)."""
    L, T, H, D = src.shape
    dst_v, src_v = values if values is not None else (dst, src)  # unused without COPY_V
    for t in (dst, src, dst_v, src_v):
        assert t.stride(3) == 1 and t.stride(2) == D and t.stride(1) == H * D, "token rows must be dense"
    n_rows = T * H
    block_rows, warps = tile or ((16, 4) if src.device.type == "cpu" else PLACE_TILE)
    grid = (triton.cdiv(n_rows, block_rows), L)
    _place_rotated_kernel[grid](
        dst,
        src,
        cos.contiguous(),
        sin.contiguous(),
        dst_v,
        src_v,  #
        dst.stride(0),
        src.stride(0),
        dst_v.stride(0),
        src_v.stride(0),  #
        n_rows,
        HALF=D // 2,
        BLOCK_ROWS=block_rows,
        COPY_V=values is not None,
        num_warps=warps,
    )
