"""The fidelity guard on CPU (bundled SmolLM2, fp32): does its predictor rank divergent answers, what
does escalating buy per unit of recompute, and does the controller meet a target?

1. Collect: MuSiQue dev (--musique examples, first --passages passages each) and synthetic examples
   (--synthetic, 10 short passages each), every prompt answered greedily (24 tokens) at each --ratios
   base ratio (default selector), every request shadowed: the guard's signals at the end of the fused
   prefill, the teacher-forced agreement of the returned answer with full attention, and ROUGE-L and
   greedy agreement against full attention's own greedy answer (each prompt also answered in full). Kept in
   results/guard_samples_cpu.json (`--samples FILE` analyses a kept file without recomputing).
2. Predictor: diverged = agreement < --label. AUC on held-out data: 5-fold by prompt (scores from a fit
   on the other folds), and across datasets (fit on one, scored on the other); each signal's own AUC.
3. Quality per cost at the first ratio: escalate the requests scoring highest (cross-validated scores),
   at shares 0..1: served agreement (escalated = full attention = 1) and recompute (share of chunk tokens
   recomputed), beside escalating at random and beside raising the base ratio for everyone.
4. Controller replay: a stream of MuSiQue prompts, then synthetic (harder), then MuSiQue again
   (--phase requests each), the controller (fidelity/controller.py, the ratios as its rungs, at each
   of --confidences) fed each request's sample at its current rung: served agreement against --target,
   recompute and the ratio it chose, per phase.
`--write-calibration` fits the shipped predictor on everything and writes fidelity/calibrated.py.

    python benchmarks/guard.py [--musique 50] [--synthetic 100] [--passages 3] [--ratios 0.15 0.25 0.4]
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
from statistics import NormalDist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path  # noqa: E402
from fusionrag_integrations.config import default_model_cache_dir  # noqa: E402
from fusionrag_integrations.evaluation.data import load_examples, synthetic_examples  # noqa: E402
from fusionrag_integrations.evaluation.metrics import prefix_agreement, rouge_l  # noqa: E402
from fusionrag_integrations.evaluation.prompts import musique_messages  # noqa: E402
from fusionrag_integrations.fidelity.controller import FidelityController  # noqa: E402
from fusionrag_integrations.fidelity.predictor import fit_predictor, roc_auc  # noqa: E402
from fusionrag_integrations.fidelity.signals import SIGNALS  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "musique_dev.json"
RESULTS = REPO / "benchmarks" / "results"
EXPLORE = 0.1  # FusionConfig.guard_explore


def collect(args) -> list[dict]:
    musique = [replace(ex, passages=ex.passages[: args.passages]) for ex in load_examples(DATA)][: args.musique]
    prompts = [("musique", ex) for ex in musique] + [("synthetic", ex) for ex in synthetic_examples(args.synthetic)]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as cache:
        config = EngineConfig(cache_dir=cache, model_cache_dir=default_model_cache_dir(), fidelity_sample_rate=1.0,
                              persist=False, gpu_cache_bytes=1 << 30, cpu_cache_bytes=4 << 30)  # fmt: skip
        engine = FusionEngine.from_pretrained(default_model_path(), device="cpu", config=config)
        for _, ex in prompts:
            engine.precompute(ex.passages)
        t0 = time.perf_counter()

        def one(item: tuple[int, float | None]):
            i, ratio = item
            dataset, ex = prompts[i]
            how = {"recompute_ratio": ratio} if ratio is not None else {"selector": "full"}
            gen = engine.generate(musique_messages(ex), max_new_tokens=24, temperature=0.0, **how)
            return i, ratio, dataset, ex, gen

        full: dict[int, tuple[list[int], str]] = {}
        work = [(i, r) for i in range(len(prompts)) for r in [None, *args.ratios]]
        with ThreadPoolExecutor(8) as pool:
            for wave in range(0, len(work), 8):
                done = list(pool.map(one, work[wave : wave + 8]))
                fused = [g for _, ratio, *_, g in done if ratio is not None]
                while any(g.stats.fidelity is None for g in fused) and not engine.fidelity_report().dropped:
                    time.sleep(0.05)
                for i, ratio, dataset, ex, gen in done:
                    if ratio is None:
                        full[i] = (gen.token_ids, gen.text)
                        continue
                    s = gen.stats.fidelity
                    rows.append({"prompt": i, "dataset": dataset, "id": ex.id, "ratio": ratio, "kl": s.kl,
                                 "top1": s.top1, "agreement": s.agreement, "tokens": s.tokens,
                                 "recompute_share": s.recompute_share, "signals": s.signals,
                                 "answer_ids": gen.token_ids, "answer": gen.text})  # fmt: skip
                print(f"{len(rows) + len(full)}/{len(work)} requests, {time.perf_counter() - t0:.0f} s", flush=True)
        for row in rows:  # against full attention's own greedy answer
            ids, text = full[row["prompt"]]
            row["greedy_agreement"] = prefix_agreement(ids, row["answer_ids"])
            row["rouge_l"] = rouge_l(text, row["answer"])
        engine.loop.stop()
    return rows


def cross_validated(rows: list[dict], label: float, folds: int = 5) -> list[float]:
    """Each row's score from a predictor fitted on the other folds (folds by prompt)."""
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(0).shuffle(prompts)
    fold_of = {p: i % folds for i, p in enumerate(prompts)}
    scores = [0.0] * len(rows)
    for k in range(folds):
        train = [r for r in rows if fold_of[r["prompt"]] != k]
        model = fit_predictor([r["signals"] for r in train], [r["agreement"] for r in train], label, "cv")
        for i, r in enumerate(rows):
            if fold_of[r["prompt"]] == k:
                scores[i] = model.score(r["signals"])
    return scores


FIGURES = ("agreement", "rouge_l", "greedy_agreement")  # teacher-forced; against full attention's own answer


def served(rows: list[dict], escalated: set[int]) -> dict:
    """Mean figures and recompute share when the rows in `escalated` are answered by full attention."""
    out = {f: statistics.fmean(1.0 if i in escalated else r[f] for i, r in enumerate(rows)) for f in FIGURES}
    out["recompute"] = statistics.fmean(1.0 if i in escalated else r["recompute_share"] for i, r in enumerate(rows))
    return out


def curve(rows: list[dict], scores: list[float], shares: list[float], by_ratio: dict) -> list[dict]:
    order = sorted(range(len(rows)), key=lambda i: -scores[i])
    worst = sorted(range(len(rows)), key=lambda i: rows[i]["agreement"])
    rng = random.Random(1)
    out = []
    for share in shares:
        k = round(share * len(rows))
        row = {"escalated": share, **served(rows, set(order[:k]))}
        row["random_agreement"] = statistics.fmean(
            served(rows, set(rng.sample(range(len(rows)), k)))["agreement"] for _ in range(200)
        )
        row["oracle_agreement"] = served(rows, set(worst[:k]))["agreement"]
        out.append(row)
    for ratio, group in by_ratio.items():
        out.append({"base_ratio": ratio, **served(group, set())})
    return out


def replay(
    rows: list[dict], scores: list[float], ratios: list[float], target: float, phases: list[tuple[str, int]],
    z: float,
) -> dict:  # fmt: skip
    """The controller over a stream whose prompts come from `phases` in turn ((dataset, requests) each),
    each request's sample read at the controller's current rung (scores: a predictor fitted on the other
    folds, as a shipped calibration would be)."""
    at = {(r["prompt"], r["ratio"]): (r, s) for r, s in zip(rows, scores)}
    rng, explore = random.Random(2), random.Random(3)
    controller = FidelityController(target, ratios[0], 0.5, (min(ratios), max(ratios)), z=z)
    controller.rungs = sorted(ratios)
    out = []
    for dataset, n in phases:
        prompts = sorted({r["prompt"] for r in rows if r["dataset"] == dataset})
        agreement, cost, ratio_seen = [], [], []
        for _ in range(n):
            row, score = at[(rng.choice(prompts), controller.ratio)]
            flagged = score >= controller.threshold
            explored = flagged and explore.random() < EXPLORE  # as the guard does for sampled requests
            escalate = flagged and not explored
            agreement.append(1.0 if escalate else row["agreement"])
            cost.append(1.0 if escalate else row["recompute_share"])
            ratio_seen.append(controller.ratio)
            if not escalate:  # at a sample rate of 1 every fused answer is measured (escalated ones are full)
                controller.observe(score, row["agreement"], 1 / EXPLORE if explored else 1.0, row["ratio"])
        half = n // 2
        out.append({"dataset": dataset, "requests": n, "agreement": statistics.fmean(agreement),
                    "agreement_second_half": statistics.fmean(agreement[half:]), "recompute": statistics.fmean(cost),
                    "mean_ratio": statistics.fmean(ratio_seen), "final_ratio": controller.ratio})  # fmt: skip
    return {"target": target, "z": z, "phases": out, "ratio_moves": controller.moves}


def write_calibration(rows: list[dict], label: float, source: str) -> None:
    model = fit_predictor([r["signals"] for r in rows], [r["agreement"] for r in rows], label, source)
    lines = ["SHIPPED = {"]
    for key, value in model.to_dict().items():
        if isinstance(value, tuple):  # one item a line, as ruff formats a list too long for one
            items = "".join(f"        {json.dumps(round(v, 6) if isinstance(v, float) else v)},\n" for v in value)
            lines.append(f'    "{key}": [\n{items}    ],')
        else:
            lines.append(f'    "{key}": {json.dumps(round(value, 6) if isinstance(value, float) else value)},')
    path = REPO / "fusionrag_integrations" / "fidelity" / "calibrated.py"
    text = path.read_text()
    start, end = text.index("SHIPPED = {"), text.index("\n}\n", text.index("SHIPPED = {")) + 3
    path.write_text(text[:start] + "\n".join(lines) + "\n}\n" + text[end:])
    print(f"calibration written: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--musique", type=int, default=50)
    parser.add_argument("--synthetic", type=int, default=100)
    parser.add_argument("--passages", type=int, default=3, help="MuSiQue passages per prompt (of 20): CPU time")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.15, 0.25, 0.4])
    parser.add_argument("--label", type=float, default=0.9, help="diverged: teacher-forced agreement below this")
    parser.add_argument("--target", type=float, default=0.9, help="the controller replay's agreement target")
    parser.add_argument("--confidences", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    parser.add_argument(
        "--phase", type=int, default=200, help="replay: requests per phase (MuSiQue, synthetic, MuSiQue)"
    )
    parser.add_argument("--samples", help="analyse this kept samples file instead of collecting")
    parser.add_argument("--keep", default=str(RESULTS / "guard_samples_cpu.json"), help="where collected samples go")
    parser.add_argument("--write-calibration", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "guard_cpu.json"))
    args = parser.parse_args()
    if args.samples:
        kept = json.loads(Path(args.samples).read_text())
        rows, args.ratios = kept["rows"], kept["ratios"]
    else:
        rows = collect(args)
        Path(args.keep).write_text(json.dumps({"ratios": args.ratios, "rows": rows}))
    base = [r for r in rows if r["ratio"] == args.ratios[0]]
    diverged = [r["agreement"] < args.label for r in base]
    scores = cross_validated(base, args.label)
    result: dict = {"settings": vars(args), "requests": len(rows), "base_rate": statistics.fmean(diverged)}
    result["auc_5fold"] = roc_auc(scores, diverged)
    cross = {}
    for train, test in (("musique", "synthetic"), ("synthetic", "musique")):
        fit_rows = [r for r in base if r["dataset"] == train]
        test_rows = [r for r in base if r["dataset"] == test]
        model = fit_predictor([r["signals"] for r in fit_rows], [r["agreement"] for r in fit_rows], args.label, train)
        cross[f"{train}->{test}"] = roc_auc([model.score(r["signals"]) for r in test_rows],
                                            [r["agreement"] < args.label for r in test_rows])  # fmt: skip
    result["auc_across"] = cross
    single = {}
    for name in SIGNALS:
        values = [r["signals"].get(name, 0.0) for r in base]
        single[name] = roc_auc(values, diverged)
    result["auc_single_signal"] = single
    by_ratio = {ratio: [r for r in rows if r["ratio"] == ratio] for ratio in args.ratios}
    shares = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    budget = (0.25 - args.ratios[0]) / (1 - args.ratios[0])  # the share whose mean recompute is 0.25
    result["curve"] = curve(base, scores, sorted(shares + [round(budget, 3)]), by_ratio)
    every_scores = cross_validated(rows, args.label)
    phases = [("musique", args.phase), ("synthetic", args.phase), ("musique", args.phase)]
    result["replay"] = [replay(rows, every_scores, args.ratios, args.target, phases, NormalDist().inv_cdf(c))
                        for c in args.confidences]  # fmt: skip
    print(f"{len(base)} requests at ratio {args.ratios[0]}: {result['base_rate']:.0%} diverged (agreement < "
          f"{args.label}); predictor AUC 5-fold {result['auc_5fold']:.3f}, across datasets "
          + ", ".join(f"{k} {v:.3f}" for k, v in cross.items()))  # fmt: skip
    print("single signals: " + ", ".join(f"{k} {v:.3f}" for k, v in single.items()))
    print("| policy | recompute | agreement (teacher-forced) | ROUGE-L vs full | greedy agreement | random / oracle |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in result["curve"]:
        name = f"escalate {row['escalated']:.1%}" if "escalated" in row else f"fixed ratio {row['base_ratio']}"
        extra = f"{row['random_agreement']:.3f} / {row['oracle_agreement']:.3f}" if "escalated" in row else "-"
        print(f"| {name} | {row['recompute']:.3f} | {row['agreement']:.3f} | {row['rouge_l']:.3f} | "
              f"{row['greedy_agreement']:.3f} | {extra} |")  # fmt: skip
    print(f"controller replay, target {args.target}, phases of {args.phase} requests:")
    print("| confidence | phase | agreement (2nd half) | recompute | mean ratio | final ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c, r in zip(args.confidences, result["replay"]):
        for ph in r["phases"]:
            print(f"| {c} | {ph['dataset']} | {ph['agreement']:.3f} ({ph['agreement_second_half']:.3f}) | "
                  f"{ph['recompute']:.3f} | {ph['mean_ratio']:.3f} | {ph['final_ratio']} |")  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.write_calibration:
        source = f"SmolLM2-135M fp32: MuSiQue dev ({args.passages} passages) + synthetic, ratios {args.ratios}"
        write_calibration(rows, args.label, source)


if __name__ == "__main__":
    main()
