"""Placing a fused request's chunks (keys re-rotated, values copied) at the 8B shape, per kernel tile, with
a plain copy of the same bytes as the memory's ceiling.

    python3 benchmarks/placement.py --chunks 32 --tokens 512

GB/s counts every byte read and written (K and V, each read once and written once).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import markdown_table  # noqa: E402

from fusionrag_integrations.kernels.rope_gather import rotation  # noqa: E402
from fusionrag_integrations.kernels.rope_gather_triton import PLACE_TILE, place_rotated_triton  # noqa: E402

TILES = [(32, 4), (64, 4), (64, 8), (128, 4), (128, 8), (256, 8), (256, 16)]


def bench_ms(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--chunks", type=int, default=32)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    args = p.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    L, T, H, D, C = args.layers, args.tokens, args.kv_heads, args.head_dim, args.chunks
    cache_k = torch.empty(L, C * T, H, D, device=dev, dtype=dt)
    cache_v = torch.empty_like(cache_k)
    chunks = [tuple(torch.randn(L, T, H, D, device=dev, dtype=dt) for _ in "kv") for _ in range(C)]
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    cos, sin = (t.to(dev) for t in rotation([1000 + i for i in range(C)], inv_freq))
    moved = 4 * L * C * T * H * D * dt.itemsize  # K and V, read and written

    def place(tile):
        for i, (k, v) in enumerate(chunks):
            span = slice(i * T, (i + 1) * T)
            place_rotated_triton(cache_k[:, span], k, cos[i], sin[i], (cache_v[:, span], v), tile=tile)

    def copy():
        for i, (k, v) in enumerate(chunks):
            span = slice(i * T, (i + 1) * T)
            cache_k[:, span].copy_(k)
            cache_v[:, span].copy_(v)

    runs = [("torch copy_ (no rotation)", copy)]
    for r, w in TILES:
        default = " (default)" if (r, w) == PLACE_TILE else ""
        runs.append((f"kernel {r} rows x {w} warps{default}", lambda t=(r, w): place(t)))
    rows = []
    for name, fn in runs:
        ms = bench_ms(fn)
        rows.append({"what": name, "ms": round(ms, 3), "gb_s": round(moved / ms / 1e6)})
    print(f"{C} chunks x {T} tokens, {L} layers, {H} KV heads x {D}: {moved / 1e9:.2f} GB moved")
    print(markdown_table(rows, ["what", "ms", "gb_s"]))


if __name__ == "__main__":
    main()
