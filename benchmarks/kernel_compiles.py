"""First-call latency of the sparse-query kernel over prompts of different lengths (GPU).

A serving engine sees a new prompt length on almost every request; a kernel specialised on a value
derived from the length compiles again for each (about a second). This times the first call at each
of N key counts (after one warm-up), as the selection probe of a 16K fused prefill makes it (80 fresh
tokens: few query tiles, so the kernel splits the keys and the split size depends on the length).

    python3 benchmarks/kernel_compiles.py [--lengths 24]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fusionrag_integrations.kernels.sparse_attention_launch import sparse_query_attention_triton  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, default=24)
    args = p.parse_args()
    dev, gen = torch.device("cuda"), torch.Generator("cuda").manual_seed(0)
    times = []
    for i in range(args.lengths + 1):
        n_keys = 16384 + 37 * i  # prompts a few tokens apart
        q = torch.randn(80, 32, 128, device=dev, dtype=torch.bfloat16, generator=gen)
        k = torch.randn(n_keys, 8, 128, device=dev, dtype=torch.bfloat16, generator=gen)
        pos = torch.arange(n_keys - 80, n_keys, device=dev)  # the question's positions
        torch.cuda.synchronize()
        t = time.perf_counter()
        sparse_query_attention_triton(q, k, k, pos, positions_sorted=True)
        torch.cuda.synchronize()
        if i:  # the first length compiles in any case
            times.append((time.perf_counter() - t) * 1e3)
    print(
        f"first call at {len(times)} new key counts: median {statistics.median(times):.1f} ms, "
        f"max {max(times):.1f} ms, total {sum(times):.0f} ms"
    )


if __name__ == "__main__":
    main()
