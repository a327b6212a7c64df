"""Exactness under batching on the device (issue 17): 8 different requests (chunk sets, lengths,
selectors, stop strings: the CPU test's set) decoded together by the scheduler against each run alone
(one-at-a-time engine), greedy, in the model's GPU dtype. Reports, per request, whether the first 32
tokens agree and where they first differ (bf16 rounding differs between batched and single-row
kernels, so a near-tie may flip; CPU fp32 is token-identical in tests/serving).

    python3 benchmarks/batch_exactness.py --model PATH.gguf [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fusionrag_integrations import EngineConfig, FusionEngine  # noqa: E402
from tests.conftest import DOCS  # noqa: E402
from tests.serving.test_scheduler import requests  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "batch_exactness_gpu.json"))
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cache = tempfile.mkdtemp(prefix="fusionrag-exactness-")
    batched = FusionEngine.from_pretrained(args.model, device=device, dtype=args.dtype,
                                           config=EngineConfig(cache_dir=cache))  # fmt: skip
    alone = FusionEngine(batched.loaded, EngineConfig(cache_dir=cache, max_running_requests=1))
    alone.precompute(DOCS, show_progress=False)
    work = [(prompt, {**settings, "max_new_tokens": args.tokens}) for prompt, settings in requests()]
    reference = [alone.generate(prompt, **settings).token_ids for prompt, settings in work]
    together: list = [None] * len(work)

    def run(i: int) -> None:
        together[i] = batched.generate(work[i][0], **work[i][1]).token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = []
    for i, (ref, got) in enumerate(zip(reference, together)):
        first_diff = next((j for j, (a, b) in enumerate(zip(ref, got)) if a != b), None)
        if first_diff is None and len(ref) != len(got):
            first_diff = min(len(ref), len(got))
        rows.append({"request": i, "selector": work[i][1]["selector"], "tokens": len(ref),
                     "identical": first_diff is None, "first_difference": first_diff})  # fmt: skip
        print(json.dumps(rows[-1]))
    scheduler = batched.scheduler
    summary = {"device": device, "dtype": args.dtype, "identical": sum(r["identical"] for r in rows),
               "requests": len(rows), "rows_per_step": scheduler.batched_rows / max(scheduler.steps, 1)}  # fmt: skip
    print(json.dumps(summary))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
