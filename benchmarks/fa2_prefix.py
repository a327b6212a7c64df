"""Could FlashAttention-2 take the dense part of the sparse-query attention? Times our kernel on a fused
request's position-sorted queries against FlashAttention-2 through torch's varlen entry over each block of
queries' fully visible keys (every block's keys the cache's prefix: `seqused_k`, all key offsets 0), the
masked tail left out. Random bf16 in the Llama-3.1-8B attention shape.

    python3 benchmarks/fa2_prefix.py

Useful TFLOP/s: 4 x head_dim x heads per (query, key) pair each side computes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fusionrag_integrations.kernels.sparse_attention_launch import sparse_query_attention_triton  # noqa: E402

SHAPES = [(16943, 2657), (16943, 1000), (33787, 5451)]  # (keys, queries): default and 0.05 at 16K, default at 32K


def bench_ms(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def main() -> None:
    dev, dt, hq, hkv, d = torch.device("cuda"), torch.bfloat16, 32, 8, 128
    torch.manual_seed(0)
    for n, n_q in SHAPES:
        chunk = torch.randperm(n - 100)[: n_q - 100]  # selected chunk tokens, then the question's 100
        pos = torch.sort(torch.cat([chunk, torch.arange(n - 100, n)])).values.to(dev)
        q = torch.randn(n_q, hq, d, device=dev, dtype=dt)
        k, v = (torch.randn(n, hkv, d, device=dev, dtype=dt) for _ in "kv")
        ours = bench_ms(lambda: sparse_query_attention_triton(q, k, v, pos, positions_sorted=True))
        useful = float((pos + 1).sum()) * hq * d * 4
        print(f"{n_q} queries over {n} keys: ours {ours:.3f} ms ({useful / ours / 1e9:.0f} TFLOP/s useful)")
        for block in (128, 256):
            blocks = -(-n_q // block)
            cu_q = torch.tensor([min(i * block, n_q) for i in range(blocks + 1)], device=dev, dtype=torch.int32)
            lows = pos[::block][:blocks].to(torch.int32).contiguous()  # keys below a block's first position
            cu_k = torch.zeros(blocks + 1, device=dev, dtype=torch.int32)

            def fa2(cu_q=cu_q, lows=lows, cu_k=cu_k, block=block):
                flash = torch.ops.aten._flash_attention_forward
                return flash(q, k, v, cu_q, cu_k, block, int(lows.max()), 0.0, False, False, seqused_k=lows)

            out = fa2()[0]
            i, a = 3 * block, int(lows[3])  # one row against SDPA over its block's prefix
            ref = F.scaled_dot_product_attention(
                q[i : i + 1].transpose(0, 1)[None], k[:a].transpose(0, 1)[None], v[:a].transpose(0, 1)[None],
                enable_gqa=True,
            )[0].transpose(0, 1)  # fmt: skip
            err = ((out[i : i + 1].float() - ref.float()).norm() / ref.float().norm()).item()
            ms = bench_ms(fa2)
            dense = float((lows.cpu().double() * torch.diff(cu_q).cpu().double()).sum()) * hq * d * 4
            print(f"  FA2, visible prefix, blocks of {block}: {ms:.3f} ms ({dense / ms / 1e9:.0f} TFLOP/s, "
                  f"{dense / useful:.2f} of the work, rel err {err:.1e})")  # fmt: skip


if __name__ == "__main__":
    main()
