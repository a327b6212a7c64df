"""Place a compact (fp8 / int4) chunk into the request's cache: dequantise, re-rotate the keys by the
position delta, write K and V, in one pass (kernels/codecs.py says what the codes and scales are).

The compact form is what the tiers hold and what crosses the PCIe bus or the disk; the model's dtype
exists only in the request's cache. The Triton kernel reads each code byte once and writes each
value once; the reference decodes with codecs.decode and places with rope_gather's reference.
"""

from __future__ import annotations

import torch

from . import _dispatch
from .codecs import decode
from .rope_gather import place_rotated_ref


def place_compact_ref(
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    codes: tuple[torch.Tensor, torch.Tensor],
    scales: dict,
    kv_format: str,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> None:
    """dst_k, dst_v: [L, T, H, D] slices of the cache; codes: (K codes, V codes) as the entry holds them."""
    k = decode(codes[0], scales, "k", kv_format, torch.float32)
    v = decode(codes[1], scales, "v", kv_format, dst_v.dtype)
    place_rotated_ref(dst_k, k, cos, sin, values=(dst_v, v))


def place_compact(
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    codes: tuple[torch.Tensor, torch.Tensor],
    scales: dict,
    kv_format: str,
    cos: torch.Tensor,
    sin: torch.Tensor,
    backend: str = "auto",
) -> None:
    """Dispatch: the fused Triton kernel on CUDA (or under TRITON_INTERPRET=1), else the reference."""
    cos, sin = cos.to(dst_k.device), sin.to(dst_k.device)
    half = dst_k.shape[-1] // 2
    dense = all(t.is_contiguous() for t in (*codes, *scales.values())) and dst_k[0].is_contiguous()
    if _dispatch.use_triton(dst_k, backend) and half & (half - 1) == 0 and dense and dst_v[0].is_contiguous():
        from .dequant_place_triton import place_compact_triton

        place_compact_triton(dst_k, dst_v, codes, scales, kv_format, cos, sin)
    else:
        place_compact_ref(dst_k, dst_v, codes, scales, kv_format, cos, sin)
