"""What fidelity shadows cost users on the GPU: serving throughput and latency at c=16 with the sample
rate at 0 and at --rate, interleaved over --rounds on one engine (the gate's serving setup: Llama-3.1-8B
shape, random bf16, 16K-token prompts from a pool 4.5x the 8 GiB GPU tier, 32 output tokens).

    python3 benchmarks/fidelity_cost.py --tokenizer DIR [--rate 0.02] [--requests 240] [--rounds 2] [--max-share 0.03]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from gate import build  # noqa: E402
from load_clients import run_clients  # noqa: E402
from serving import Workload, summarize  # noqa: E402

from fusionrag_integrations import EngineConfig, FusionEngine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--rate", type=float, default=0.02)
    p.add_argument("--requests", type=int, default=240)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-share", type=float, default=0.03, help="EngineConfig.fidelity_max_share")
    p.add_argument("--out", default=str(HERE / "results" / "fidelity_cost_gpu.json"))
    args = p.parse_args()
    loaded, hf = build(args)
    del hf
    config = EngineConfig(persist=False, gpu_cache_bytes=8 << 30, cpu_cache_bytes=96 << 30,
                          fidelity_max_share=args.max_share)  # fmt: skip
    engine = FusionEngine(loaded, config)
    workload = Workload(loaded.tokenizer, 520, 32)
    engine.precompute(workload.chunks)
    settings = {"max_new_tokens": 32}
    run_clients(engine, [workload.request() for _ in range(32)], settings, 16, 0.0)  # warm-up
    rows = []
    for _ in range(args.rounds):
        for rate in (0.0, args.rate):
            engine.fidelity.sample_rate = rate
            before = sum(e.n for e in engine.fidelity_report().estimates)
            res = run_clients(engine, [workload.request() for _ in range(args.requests)], settings, 16, 0.15)
            s = summarize(res, skip=16, rate=rate)
            deadline = time.monotonic() + 60
            while engine.fidelity.pending and time.monotonic() < deadline:
                time.sleep(0.05)
            report = engine.fidelity_report()
            s["shadows"] = sum(e.n for e in report.estimates) - before
            s["dropped_total"] = report.dropped
            rows.append(s)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in s.items()}), flush=True)
    engine.loop.stop()
    off = [r for r in rows if r["rate"] == 0.0]
    on = [r for r in rows if r["rate"] == args.rate]
    for key in ("req_per_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms"):
        a, b = statistics.mean(r[key] for r in off), statistics.mean(r[key] for r in on)
        print(f"| {key} | {a:.4g} | {b:.4g} | {b / a - 1:+.1%} |")
    shadows = sum(r["shadows"] for r in on)
    print(f"shadows measured at rate {args.rate}: {shadows} of {len(on) * args.requests} requests")
    Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
