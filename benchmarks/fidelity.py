"""The fidelity monitor on CPU (bundled SmolLM2, fp32, MuSiQue dev): is the shadow's measurement right,
and how well does a sample estimate every fused request's mean?

1. Correctness: the first --check examples, answered greedily through the step loop with every fused
   request shadowed; each sample's KL, top-1 and teacher-forced agreement against the quality
   harness's for the same prompt and answer (its own full and fused prefills; teacher forcing by
   decode steps, where the shadow prefills). Relative KL difference, absolute agreement difference.
2. Sampling: --requests requests (the dev examples in turn, sampled at temperature 0.7 with a
   seed each, in waves of 8 at once), every one shadowed: the all-requests mean agreement. Then the estimate
   a --rate sample would give, drawn 10,000 times (each request kept with probability --rate, as
   the engine samples): its error against the all-requests mean (median, 95th percentile, share
   within 0.02) and how often its 95% interval holds the all-requests mean.

Prompts hold the first --passages passages of each example (8 of 20 by default: CPU time).

    python benchmarks/fidelity.py [--requests 400] [--rate 0.05] [--check 10] [--passages 8]
                                  [--out benchmarks/results/fidelity_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path  # noqa: E402
from fusionrag_integrations.config import default_model_cache_dir  # noqa: E402
from fusionrag_integrations.evaluation.data import load_examples  # noqa: E402
from fusionrag_integrations.evaluation.harness import teacher_forced  # noqa: E402
from fusionrag_integrations.evaluation.metrics import kl_divergence  # noqa: E402
from fusionrag_integrations.evaluation.prompts import musique_messages  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "musique_dev.json"


def wait_for(engine: FusionEngine, measured: int):
    """The report once `measured` samples were recorded in all (or one was dropped)."""
    while True:
        report = engine.fidelity_report()
        if sum(e.n for e in report.estimates) >= measured and report.pending == 0 or report.dropped:
            return report
        time.sleep(0.1)


def check(engine: FusionEngine, examples) -> dict:
    gens = [engine.generate(musique_messages(ex), max_new_tokens=32, temperature=0.0) for ex in examples]
    wait_for(engine, len(examples))
    rows = []
    for ex, gen in zip(examples, gens):
        sample = gen.stats.fidelity
        messages = musique_messages(ex)
        full = engine.prefill(messages, selector="full").logits
        fused = engine.prefill(messages).logits
        kl = kl_divergence(full, fused)
        agreement = teacher_forced(engine, messages, gen.token_ids, fused)
        rows.append({"example": ex.id, "kl_shadow": sample.kl, "kl_harness": kl,
                     "kl_rel_diff": abs(sample.kl - kl) / kl,
                     "top1_equal": sample.top1 == float(full.argmax() == fused.argmax()),
                     "agreement_shadow": sample.agreement, "agreement_harness": agreement,
                     "agreement_diff": abs(sample.agreement - agreement), "tokens": sample.tokens})  # fmt: skip
    return {
        "n": len(rows),
        "max_kl_rel_diff": max(r["kl_rel_diff"] for r in rows),
        "max_agreement_diff": max(r["agreement_diff"] for r in rows),
        "top1_all_equal": all(r["top1_equal"] for r in rows),
        "rows": rows,
    }


def sampling(engine: FusionEngine, examples, requests: int, rate: float) -> dict:
    before = sum(e.n for e in engine.fidelity_report().estimates)
    t0 = time.perf_counter()

    def one(i: int):
        ex = examples[i % len(examples)]
        return engine.generate(musique_messages(ex), max_new_tokens=16, temperature=0.7, seed=i)

    gens = []
    with ThreadPoolExecutor(8) as pool:  # waves of 8: at a rate of 1.0 a steady stream outruns the shadows
        for wave in range(0, requests, 8):
            gens += pool.map(one, range(wave, min(wave + 8, requests)))
            wait_for(engine, before + len(gens))
    report = wait_for(engine, before + requests)
    wall = time.perf_counter() - t0
    values = [g.stats.fidelity.agreement for g in gens]  # each request's own sample, set when measured
    estimate = max(report.estimates, key=lambda e: e.n)  # the default configuration's, check rows included
    truth = statistics.fmean(values)
    rng, errors, covered = random.Random(0), [], 0
    for _ in range(10_000):
        kept = [v for v in values if rng.random() < rate]
        if len(kept) < 2:
            continue
        mean = statistics.fmean(kept)
        half = 1.96 * statistics.stdev(kept) / len(kept) ** 0.5
        errors.append(abs(mean - truth))
        covered += mean - half <= truth <= mean + half
    errors.sort()
    return {
        "requests": requests,
        "rate": rate,
        "wall_s": wall,
        "all_requests_agreement": truth,
        "all_requests_agreement_sd": statistics.stdev(values),
        "monitor_estimate": [estimate.n, estimate.agreement.mean, estimate.agreement.low, estimate.agreement.high],
        "dropped": report.dropped,
        "draws": len(errors),
        "expected_samples": rate * requests,
        "error_median": errors[len(errors) // 2],
        "error_p95": errors[int(0.95 * len(errors))],
        "within_0_02": sum(e <= 0.02 for e in errors) / len(errors),
        "ci95_coverage": covered / len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--check", type=int, default=10)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--passages", type=int, default=8, help="passages per prompt (of 20): CPU time")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fidelity_cpu.json"))
    args = parser.parse_args()
    examples = [replace(ex, passages=ex.passages[: args.passages]) for ex in load_examples(args.data)]
    with tempfile.TemporaryDirectory() as cache:
        config = EngineConfig(
            cache_dir=cache,
            model_cache_dir=default_model_cache_dir(),
            fidelity_sample_rate=1.0,
            gpu_cache_bytes=1 << 30,
            cpu_cache_bytes=2 << 30,
        )  # the disk tier holds the rest
        engine = FusionEngine.from_pretrained(default_model_path(), device="cpu", config=config)
        for ex in examples:
            engine.precompute(ex.passages)
        result = {"check": check(engine, examples[: args.check])}
        c = result["check"]
        print(f"correctness, {c['n']} MuSiQue prompts: max KL relative difference {c['max_kl_rel_diff']:.2e}, "
              f"max agreement difference {c['max_agreement_diff']:.2e}, top-1 equal: "
              f"{c['top1_all_equal']}")  # fmt: skip
        result["sampling"] = s = sampling(engine, examples, args.requests, args.rate)
        print(f"sampling: {s['requests']} requests in {s['wall_s']:.0f} s, all-requests mean agreement "
              f"{s['all_requests_agreement']:.3f} (sd {s['all_requests_agreement_sd']:.3f}); a {s['rate']:.0%} "
              f"sample (~{s['expected_samples']:.0f} requests): error median {s['error_median']:.3f}, p95 "
              f"{s['error_p95']:.3f}, within 0.02 in {s['within_0_02']:.0%} of draws, 95% interval holds the "
              f"mean in {s['ci95_coverage']:.0%}")  # fmt: skip
        engine.loop.stop()
    result["settings"] = vars(args)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
