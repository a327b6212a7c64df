"""What pinning host memory costs the chunk store's demotion path, under PyTorch's host-allocator settings.

A chunk the GPU tier evicts is copied into fresh pinned memory (store/tiers.py). By default PyTorch pins
with cudaHostAlloc, one call at a time under a driver lock; with `pinned_use_cuda_host_register` it
allocates ordinary memory, touches its pages from `pinned_num_register_threads` threads and registers it.
Each setting runs in a fresh process (the allocator's settings and cache are per process):

- compute_s: 120 steps of GPU work (~16 ms each, bf16 GEMMs), alone;
- compute_plus_demote_s: the same steps, each followed by a demotion of a 64 MiB entry (two 32 MiB
  tensors copied device -> fresh pinned memory, non-blocking), the shape of an ingest that overflows
  the GPU tier;
- pin_only_gib_s: 4 GiB pinned in 32 MiB blocks, nothing else running.

    python3 benchmarks/pinning.py            # a GPU; writes results/pinning_<gpu>.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SETTINGS = {
    "cudaHostAlloc (default)": "",
    "host_register, 8 threads": "pinned_use_cuda_host_register:True,pinned_num_register_threads:8",
    "host_register, 16 threads": "pinned_use_cuda_host_register:True,pinned_num_register_threads:16",
    "background threads": "pinned_use_background_threads:True",
}

CHILD = r"""
import json, time, torch
d = torch.device("cuda")
a = torch.randn(8192, 8192, device=d, dtype=torch.bfloat16)
src = [torch.randn(16 << 20, device=d, dtype=torch.bfloat16) for _ in range(2)]
def work():
    for _ in range(10):
        a @ a
for _ in range(5):
    work()
torch.cuda.synchronize()
steps = 120
t0 = time.perf_counter()
for _ in range(steps):
    work()
torch.cuda.synchronize()
compute = time.perf_counter() - t0
kept = []
t0 = time.perf_counter()
for _ in range(steps):
    work()
    for s in src:
        out = torch.empty(s.shape, dtype=s.dtype, pin_memory=True)
        kept.append(out.copy_(s, non_blocking=True))
torch.cuda.synchronize()
both = time.perf_counter() - t0
t0 = time.perf_counter()
blocks = [torch.empty(32 << 20, dtype=torch.uint8, pin_memory=True) for _ in range(128)]
pin_only = time.perf_counter() - t0
print(json.dumps({"compute_s": round(compute, 3), "compute_plus_demote_s": round(both, 3),
                  "demoted_gib": steps * 64 / 1024, "pin_only_gib_s": round(4 / pin_only, 2)}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("pinning.py measures CUDA pinned memory: it needs a GPU")
    sys.path.insert(0, str(HERE))
    from common import markdown_table

    rows = []
    for name, conf in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
        if conf:
            env["PYTORCH_CUDA_ALLOC_CONF"] = conf
        run = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            raise SystemExit(f"{name}: {run.stderr.strip()[-600:]}")
        row = {"setting": name, **json.loads(run.stdout.strip().splitlines()[-1])}
        row["demotion_overhead_s"] = round(row["compute_plus_demote_s"] - row["compute_s"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(markdown_table(rows, list(rows[0])))
    gpu = torch.cuda.get_device_name().lower().replace(" ", "_")
    out = Path(args.out_dir) / f"pinning_{gpu}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
