"""Triton kernel for rotary.apply_rotary_: each (x1, x2) half-pair read once and rotated in place."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["n_rows"])  # the token count changes by request: one compile for all
def _rotate_inplace_kernel(
    X,
    Cos,
    Sin,  #
    stride_xn,
    stride_xh,
    stride_cn,  #
    n_rows,  # N * H (token, head) rows
    n_heads,
    HALF: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    valid = rows < n_rows
    token = rows // n_heads
    offs = tl.arange(0, HALF)
    x = X + token[:, None] * stride_xn + (rows % n_heads)[:, None] * stride_xh + offs[None, :]
    x1 = tl.load(x, mask=valid[:, None], other=0.0).to(tl.float32)
    x2 = tl.load(x + HALF, mask=valid[:, None], other=0.0).to(tl.float32)
    angle = token[:, None] * stride_cn + offs[None, :]  # the first half of cos/sin (both halves are equal)
    cos = tl.load(Cos + angle, mask=valid[:, None], other=0.0).to(tl.float32)
    sin = tl.load(Sin + angle, mask=valid[:, None], other=0.0).to(tl.float32)
    tl.store(x, (x1 * cos - x2 * sin).to(X.dtype.element_ty), mask=valid[:, None])
    tl.store(x + HALF, (x2 * cos + x1 * sin).to(X.dtype.element_ty), mask=valid[:, None])


def rotate_inplace_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """x: [N, H, D] (last dim contiguous); cos, sin: [N, 1, D] with equal strides."""
    n, heads, d = x.shape
    n_rows = n * heads
    if n_rows == 0:
        return
    block_rows = 16 if x.device.type == "cpu" else 32
    _rotate_inplace_kernel[(triton.cdiv(n_rows, block_rows),)](
        x, cos, sin, x.stride(0), x.stride(1), cos.stride(0), n_rows, heads, HALF=d // 2, BLOCK_ROWS=block_rows
    )
