"""Triton kernel for dequant_place.place_compact: codes + scales in, rotated K and V out, one pass."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .codecs import INT4_GROUP


@triton.jit
def _e4m3(bits):
    """float8 e4m3 bits (uint8, as int32) -> float32, by arithmetic (no fp8 type needed anywhere)."""
    sign = tl.where((bits & 128) != 0, -1.0, 1.0)
    exp = (bits >> 3) & 15
    man = (bits & 7).to(tl.float32)
    normal = (1.0 + man / 8.0) * tl.exp2(exp.to(tl.float32) - 7.0)
    subnormal = man / 8.0 * 0.015625  # 2^-6
    return sign * tl.where(exp == 0, subnormal, normal)


@triton.jit
def _load_pair(
    Codes,
    Scale,
    Zero,
    layer_codes,
    layer_scales,
    rows,
    tokens,
    heads,
    valid,
    H,
    HALF: tl.constexpr,
    INT4: tl.constexpr,
    GROUP: tl.constexpr,
):
    """The two rotate-half halves (x1 = channels [0, HALF), x2 = [HALF, 2 HALF)) of each row, float32."""
    offs = tl.arange(0, HALF)
    m = valid[:, None]
    if INT4:
        byte = tl.load(Codes + layer_codes + rows[:, None] * HALF + offs[None, :], mask=m, other=0).to(tl.int32)
        base = layer_scales + (tokens // GROUP)[:, None] * (H * 2 * HALF) + heads[:, None] * (2 * HALF) + offs[None, :]
        s1 = tl.load(Scale + base, mask=m, other=0.0).to(tl.float32)
        s2 = tl.load(Scale + base + HALF, mask=m, other=0.0).to(tl.float32)
        z1 = tl.load(Zero + base, mask=m, other=0.0).to(tl.float32)
        z2 = tl.load(Zero + base + HALF, mask=m, other=0.0).to(tl.float32)
        x1 = (byte & 15).to(tl.float32) * s1 + z1
        x2 = (byte >> 4).to(tl.float32) * s2 + z2
    else:
        src = Codes + layer_codes + rows[:, None] * (2 * HALF) + offs[None, :]
        scale = tl.load(Scale + layer_scales + rows, mask=valid, other=0.0).to(tl.float32)[:, None]
        x1 = _e4m3(tl.load(src, mask=m, other=0).to(tl.int32)) * scale
        x2 = _e4m3(tl.load(src + HALF, mask=m, other=0).to(tl.int32)) * scale
    return x1, x2


@triton.jit(do_not_specialize=["n_rows"])  # the chunk length changes by chunk: one compile for all
def _place_compact_kernel(
    DstK,
    DstV,
    CodesK,
    CodesV,
    ScaleK,
    ZeroK,
    ScaleV,
    ZeroV,
    Cos,
    Sin,
    stride_dk,
    stride_dv,
    stride_codes,
    stride_scales,
    n_rows,
    H,
    HALF: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    INT4: tl.constexpr,
    GROUP: tl.constexpr,
):
    layer = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    valid = rows < n_rows
    tokens, heads = rows // H, rows % H
    offs = tl.arange(0, HALF)
    lc, ls = layer * stride_codes, layer * stride_scales
    k1, k2 = _load_pair(CodesK, ScaleK, ZeroK, lc, ls, rows, tokens, heads, valid, H, HALF, INT4, GROUP)
    cos = tl.load(Cos + offs)[None, :]
    sin = tl.load(Sin + offs)[None, :]
    dk = DstK + layer * stride_dk + rows[:, None] * (2 * HALF) + offs[None, :]
    tl.store(dk, (k1 * cos - k2 * sin).to(DstK.dtype.element_ty), mask=valid[:, None])
    tl.store(dk + HALF, (k2 * cos + k1 * sin).to(DstK.dtype.element_ty), mask=valid[:, None])
    v1, v2 = _load_pair(CodesV, ScaleV, ZeroV, lc, ls, rows, tokens, heads, valid, H, HALF, INT4, GROUP)
    dv = DstV + layer * stride_dv + rows[:, None] * (2 * HALF) + offs[None, :]
    tl.store(dv, v1.to(DstV.dtype.element_ty), mask=valid[:, None])
    tl.store(dv + HALF, v2.to(DstV.dtype.element_ty), mask=valid[:, None])


def place_compact_triton(
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    codes: tuple[torch.Tensor, torch.Tensor],
    scales: dict,
    kv_format: str,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> None:
    """dst_k, dst_v: [L, T, H, D] with (T, H, D) dense inside each layer; codes and scales dense."""
    L, T, H, D = dst_k.shape
    for t in (dst_k, dst_v):
        assert t.stride(3) == 1 and t.stride(2) == D and t.stride(1) == H * D, "token rows must be dense"
    int4 = kv_format == "int4"
    k_codes, v_codes = codes
    zero_k = scales["k_zero"] if int4 else scales["k_scale"]  # unused for fp8
    zero_v = scales["v_zero"] if int4 else scales["v_scale"]
    block_rows = 16 if dst_k.device.type == "cpu" else 64
    grid = (triton.cdiv(T * H, block_rows), L)
    _place_compact_kernel[grid](
        dst_k,
        dst_v,
        k_codes,
        v_codes,
        scales["k_scale"],
        zero_k,
        scales["v_scale"],
        zero_v,
        cos.contiguous(),
        sin.contiguous(),
        dst_k.stride(0),
        dst_v.stride(0),
        k_codes.stride(0),
        scales["k_scale"].stride(0),
        T * H,
        H,
        HALF=D // 2,
        BLOCK_ROWS=block_rows,
        INT4=int4,
        GROUP=INT4_GROUP,
    )
