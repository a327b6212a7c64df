"""A/B of a change to the sparse-query attention kernel: two versions of its source in one process.

    git show main:fusionrag_integrations/kernels/sparse_attention_triton.py > /tmp/base_kernel.py
    python3 benchmarks/attention_ab.py --baseline /tmp/base_kernel.py          # GPU: the 8B shape's heads
    TRITON_INTERPRET=1 python benchmarks/attention_ab.py --baseline FILE --shapes 300:80   # CPU smoke run

The kernel in the tree and the baseline's are launched through the same launcher (sorting, key splits,
the autotuner's configs: each version tuned on its own), at a fused prefill's shapes: `skv` keys, `sq`
recomputed queries spread over them with a 64-token question at the end. The versions alternate over
`--rounds` rounds (median of medians), so a drift of the GPU's clock hits both alike: a change of a few
percent, which one end-to-end run across machines cannot resolve, shows here. Each row also gives the
largest difference from the baseline's output (two correct kernels differ by bf16 rounding only).
`--others` adds more versions (files), each timed like the tree's: several ideas in one device call.
`--splits` also times the tree's kernel with the keys forced into that many ranges (flash-decoding) for
query counts under LARGE_QUERY_COUNT, where the query tiles alone make about two unequal waves.
Writes results/attention_ab_<gpu>.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import triton  # noqa: E402
from common import device_name, markdown_table  # noqa: E402
from sparse_attention import bench_ms, selected_positions  # noqa: E402

from fusionrag_integrations.kernels import sparse_attention_launch as launch  # noqa: E402


def load_kernel(path: Path) -> tuple[Callable, Callable]:
    """A version's forward kernel, plain and wrapped in the launcher's autotuner (its own tuning)."""
    spec = importlib.util.spec_from_file_location(f"sparse_attention_{path.stem}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plain = module._sparse_query_attn_fwd
    return plain, triton.autotune(configs=launch._GPU_CONFIGS, key=["HEAD_DIM", "GROUP_PAD", "q_bucket"])(plain)


def timed_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        return bench_ms(fn)
    t0 = time.perf_counter()  # the interpreter: proves the script runs, times nothing of interest
    fn()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, required=True, help="another version of sparse_attention_triton.py")
    p.add_argument("--shapes", nargs="+", default=["16943:1000", "16943:2700", "33787:1950", "33787:5450"],
                   help="keys:queries (16K and 32K prompts at ratios 0.05 and 0.15)")  # fmt: skip
    p.add_argument("--others", type=Path, nargs="*", default=[], help="more versions, each timed like the tree's")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--splits", type=int, nargs="*", default=[2, 3])
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    heads, dim = ((32, 8), 128) if device.type == "cuda" else ((8, 2), 64)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tree = (launch._sparse_query_attn_fwd, launch._sparse_query_attn_fwd_tuned)
    versions = {"baseline": load_kernel(args.baseline), "tree": tree}
    versions.update({path.name: load_kernel(path) for path in args.others})
    gen, rows = torch.Generator().manual_seed(0), []
    print(f"device: {device_name(device)}", flush=True)
    try:
        for shape in args.shapes:
            skv, sq = (int(x) for x in shape.split(":"))
            k, v = (torch.randn(skv, heads[1], dim, generator=gen).to(device, dtype) for _ in range(2))
            q = torch.randn(sq, heads[0], dim, generator=gen).to(device, dtype)
            pos = selected_positions(sq, skv, gen).to(device)  # a 64-token question, the rest spread
            flops = 4.0 * heads[0] * dim * float((pos + 1).sum())

            def attend(q=q, k=k, v=v, pos=pos) -> torch.Tensor:  # whichever version is installed
                return launch.sparse_query_attention_triton(q, k, v, pos, positions_sorted=True)

            runs: dict[str, Callable[[], torch.Tensor]] = dict.fromkeys(versions, attend)
            if sq < launch.LARGE_QUERY_COUNT and device.type == "cuda":
                for n in args.splits:
                    runs[f"tree, {n} key splits"] = lambda n=n: launch.sparse_query_attention_triton(
                        q, k, v, pos, positions_sorted=True, num_splits=n
                    )
            outputs, times = {}, {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, run in runs.items():
                    launch._sparse_query_attn_fwd, launch._sparse_query_attn_fwd_tuned = versions.get(name, tree)
                    outputs[name] = run()  # also the warm-up (the autotuner's first call)
                    times[name].append(timed_ms(run, device))
            base = statistics.median(times["baseline"])
            for name in runs:
                ms = statistics.median(times[name])
                diff = (outputs[name].float() - outputs["baseline"].float()).abs().max().item()
                rows.append({"keys": skv, "queries": sq, "version": name, "ms": round(ms, 4),
                             "speedup": round(base / ms, 3), "useful_tflops": round(flops / ms / 1e9, 1),
                             "max_abs_diff": float(f"{diff:.3g}")})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    finally:
        launch._sparse_query_attn_fwd, launch._sparse_query_attn_fwd_tuned = tree
    print(markdown_table(rows, list(rows[0])))
    out = Path(args.out_dir) / f"attention_ab_{'gpu' if device.type == 'cuda' else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name(device), "baseline": str(args.baseline), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
