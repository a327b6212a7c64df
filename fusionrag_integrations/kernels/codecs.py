"""Stored-KV formats: how a chunk's K and V are kept in the tiers and on disk.

- "native": the model's dtype (bf16 on the GPU), bit-exact; 2 bytes per value in bf16.
- "fp8": float8 e4m3 codes with one fp16 scale per (layer, token, KV head): absmax / 448.
  1 + 2/D bytes per value (51.6% of bf16 at D = 64 or 128).
- "int4": 4-bit codes with an fp16 scale and zero per (layer, group of 64 tokens, KV head, channel)
  (asymmetric min/max), two codes per byte: channel d in the low nibble, channel d + D/2 in the high
  one, so a rotate-half RoPE pair comes out of one byte. 0.5 + 4/64 bytes per value (28.1% of bf16).

Why per channel, over tokens, for both K and V: keys have outlier channels (large in every token),
so a group along the head dimension spends its range on the outlier and rounds the rest away;
along the token axis each channel gets its own range. Measured on SmolLM2's chunk KV (README
text, 4 chunks; relative Frobenius error): K per channel 4.6% vs per token 13.1%; V per channel
8.6% vs per token 9.6%. One layout for both also keeps one dequantisation path. Scales live beside
the codes (`ChunkKV.scales`) and are checksummed with them; dequantisation happens where a chunk is
placed into a request's cache (kernels/dequant_place.py), never as a separate pass over the tiers.
"""

from __future__ import annotations

import torch

KV_FORMATS = ("native", "fp8", "int4")
INT4_GROUP = 64  # tokens per int4 scale/zero group
FP8_MAX = 448.0  # largest finite e4m3 value


def encode(k: torch.Tensor, v: torch.Tensor, kv_format: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(k codes, v codes, scales) of [L, T, H, D] K and V; native returns them untouched."""
    if kv_format == "native":
        return k, v, {}
    if kv_format == "fp8":
        (kc, ks), (vc, vs) = _fp8(k), _fp8(v)
        return kc, vc, {"k_scale": ks, "v_scale": vs}
    if kv_format == "int4":
        (kc, ks, kz), (vc, vs, vz) = _int4(k), _int4(v)
        return kc, vc, {"k_scale": ks, "k_zero": kz, "v_scale": vs, "v_zero": vz}
    raise ValueError(f"unknown kv_format {kv_format!r}; expected one of {KV_FORMATS}")


def decode(codes: torch.Tensor, scales: dict, which: str, kv_format: str, dtype: torch.dtype) -> torch.Tensor:
    """The [L, T, H, D] values of K (which="k") or V ("v") in `dtype` (the PyTorch reference)."""
    if kv_format == "native":
        return codes.to(dtype)
    if kv_format == "fp8":
        return (codes.view(torch.float8_e4m3fn).float() * scales[f"{which}_scale"].float()).to(dtype)
    if kv_format == "int4":
        low, high = (codes & 15).float(), (codes >> 4).float()
        q = torch.cat((low, high), dim=-1)  # [L, T, H, D]
        group = torch.arange(q.shape[1], device=q.device) // INT4_GROUP
        scale, zero = scales[f"{which}_scale"].float()[:, group], scales[f"{which}_zero"].float()[:, group]
        return (q * scale + zero).to(dtype)
    raise ValueError(f"unknown kv_format {kv_format!r}")


def expected_shapes(kv_format: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of codes and scales for values of `shape` [L, T, H, D] (what a read entry is checked against)."""
    L, T, H, D = shape
    if kv_format == "native":
        return {"k": shape, "v": shape}
    if kv_format == "fp8":
        return {"k": shape, "v": shape, "k_scale": (L, T, H, 1), "v_scale": (L, T, H, 1)}
    groups = -(-T // INT4_GROUP)
    per_group = (L, groups, H, D)
    return {
        "k": (L, T, H, D // 2),
        "v": (L, T, H, D // 2),
        "k_scale": per_group,
        "k_zero": per_group,
        "v_scale": per_group,
        "v_zero": per_group,
    }


def code_dtypes(kv_format: str) -> set[torch.dtype]:
    return {torch.uint8} if kv_format in ("fp8", "int4") else {torch.float32, torch.float16, torch.bfloat16}


def _fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float()
    scale = (x.abs().amax(-1, keepdim=True) / FP8_MAX).clamp_min(1e-6).half()
    codes = (x / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return codes.view(torch.uint8), scale


def _int4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    L, T, H, D = x.shape
    pad = (-T) % INT4_GROUP
    xf = x.float()
    padded = torch.nn.functional.pad(xf, (0, 0, 0, 0, 0, pad), value=float("nan")) if pad else xf
    groups = padded.reshape(L, -1, INT4_GROUP, H, D)
    lo = groups.nan_to_num(float("inf")).amin(2)  # [L, G, H, D]; the padding never sets the range
    hi = groups.nan_to_num(float("-inf")).amax(2)
    scale = ((hi - lo) / 15).clamp_min(1e-6).half()
    zero = lo.half()
    group = torch.arange(T, device=x.device) // INT4_GROUP
    q = ((xf - zero.float()[:, group]) / scale.float()[:, group]).round().clamp(0, 15).to(torch.uint8)
    half = D // 2
    return q[..., :half] | (q[..., half:] << 4), scale, zero
