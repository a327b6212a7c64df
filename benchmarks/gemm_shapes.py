"""The recompute's GEMMs alone, at the shapes of one fused request (Llama-3.1-8B, bf16): how close
cuBLAS comes to the tensor cores' peak at each M (recomputed tokens), and whether padding M helps.

    python3 benchmarks/gemm_shapes.py --m 1000 2785 5451
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o_proj": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def bench_ms(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--m", type=int, nargs="+", default=[1000, 2785, 5451])
    args = p.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    rows = []
    for m in args.m:
        total_ms, total_flops = 0.0, 0.0
        for name, (n, k) in SHAPES.items():
            w = torch.randn(n, k, device=dev, dtype=dt) * 0.02
            for mm in sorted({m, -(-m // 128) * 128}):
                x = torch.randn(mm, k, device=dev, dtype=dt)
                ms = bench_ms(lambda: F.linear(x, w))
                flops = 2.0 * mm * n * k
                rows.append({"m": mm, "gemm": name, "ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)})
                if mm == m:
                    total_ms, total_flops = total_ms + ms, total_flops + flops
        tflops = round(total_flops / total_ms / 1e9, 1)
        rows.append({"m": m, "gemm": "layer (4 GEMMs)", "ms": round(total_ms, 4), "tflops": tflops,
                     "x32_layers_ms": round(32 * total_ms, 2)})  # fmt: skip
    print(markdown_table(rows, ["m", "gemm", "ms", "tflops", "x32_layers_ms"]))


if __name__ == "__main__":
    main()
