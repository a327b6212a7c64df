"""The fidelity controller live in the step loop (CPU, bundled SmolLM2 fp32): an engine with
`fusion.fidelity_target` and every fused request shadowed serves a stream whose difficulty changes:
MuSiQue dev prompts (first --passages passages), then synthetic ones (harder for this model), then
MuSiQue again, --phase requests each, --clients at a time. Per phase: the agreement of the answers
served (teacher-forced against full attention; an escalated request is full attention's answer, 1.0),
over the phase and over its second half, the mean share of chunk tokens recomputed, the share escalated,
the base ratio the fused answers ran at, and the ratio the controller holds at the phase's end.

benchmarks/guard.py replays the same controller over recorded samples; here it steers real requests,
with the shadows finishing after the answers (so it acts on samples a few requests old).

    python benchmarks/controller_live.py [--phase 160 160 120] [--target 0.9] [--clients 8]
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
from fusionrag_integrations.evaluation.data import load_examples, synthetic_examples  # noqa: E402
from fusionrag_integrations.evaluation.prompts import musique_messages  # noqa: E402
from fusionrag_integrations.outputs import Generation  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "musique_dev.json"
RESULTS = REPO / "benchmarks" / "results"


def served(gen: Generation) -> tuple[float, float] | None:
    """(agreement served, share of chunk tokens recomputed) of one answer; None if its shadow was dropped."""
    stats = gen.stats
    if stats.escalated:
        return 1.0, 1.0
    if stats.fidelity is None:
        return None
    return stats.fidelity.agreement, stats.fidelity.recompute_share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=int, nargs=3, default=[160, 160, 120], help="requests per phase")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--confidence", type=float, default=0.8)
    parser.add_argument("--passages", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS / "controller_live_cpu.json"))
    args = parser.parse_args()
    musique = [replace(ex, passages=ex.passages[: args.passages]) for ex in load_examples(DATA)][:50]
    pools = {"musique": musique, "synthetic": synthetic_examples(100)}
    stream = [(name, n) for name, n in zip(("musique", "synthetic", "musique"), args.phase)]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as cache:
        fusion = {"fidelity_target": args.target, "fidelity_confidence": args.confidence}
        config = EngineConfig(
            cache_dir=cache,
            model_cache_dir=default_model_cache_dir(),
            fidelity_sample_rate=1.0,
            persist=False,
            fusion=fusion,
            gpu_cache_bytes=1 << 30,
            cpu_cache_bytes=4 << 30,
        )
        engine = FusionEngine.from_pretrained(default_model_path(), device="cpu", config=config)
        for examples in pools.values():
            for ex in examples:
                engine.precompute(ex.passages)
        controller = engine.fidelity.guard.controller
        assert controller is not None, "fidelity_target makes a controller"

        def one(ex) -> Generation:
            return engine.generate(musique_messages(ex), max_new_tokens=24, temperature=0.0)

        phases, t0 = [], time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            for name, n in stream:
                rows: list[dict] = []
                while len(rows) < n:
                    wave = [rng.choice(pools[name]) for _ in range(min(args.clients, n - len(rows)))]
                    gens = list(pool.map(one, wave))
                    deadline = time.monotonic() + 300  # shadows run after the answers, in spare steps
                    while any(served(g) is None for g in gens) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    for g in gens:
                        figures = served(g)
                        if figures is not None:
                            rows.append(
                                {
                                    "agreement": figures[0],
                                    "recompute": figures[1],
                                    "ratio": g.stats.recompute_ratio,
                                    "escalated": g.stats.escalated,
                                }
                            )
                    print(
                        f"{name}: {len(rows)}/{n}, ratio {controller.ratio}, {time.perf_counter() - t0:.0f} s",
                        flush=True,
                    )
                half = rows[len(rows) // 2 :]
                phases.append(
                    {
                        "dataset": name,
                        "requests": len(rows),
                        "agreement": statistics.fmean(r["agreement"] for r in rows),
                        "agreement_second_half": statistics.fmean(r["agreement"] for r in half),
                        "recompute": statistics.fmean(r["recompute"] for r in rows),
                        "escalated": statistics.fmean(r["escalated"] for r in rows),
                        "mean_ratio": statistics.fmean(r["ratio"] for r in rows if not r["escalated"]),
                        "final_ratio": controller.ratio,
                        "rows": rows,
                    }
                )
        engine.loop.stop()
    print(f"\ntarget {args.target} (confidence {args.confidence}), {time.perf_counter() - t0:.0f} s\n")
    print("| phase | requests | agreement (second half) | recompute | escalated | mean ratio | final ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for p in phases:
        print(
            f"| {p['dataset']} | {p['requests']} | {p['agreement']:.3f} ({p['agreement_second_half']:.3f}) | "
            f"{p['recompute']:.3f} | {p['escalated']:.3f} | {p['mean_ratio']:.3f} | {p['final_ratio']} |"
        )
    Path(args.out).write_text(
        json.dumps(
            {"target": args.target, "confidence": args.confidence, "moves": controller.moves, "phases": phases},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
