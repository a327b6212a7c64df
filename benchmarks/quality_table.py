"""Issue 21's tables: every candidate x ratio x precompute mode, per dataset, from quality-sweep runs.

    python benchmarks/quality_table.py benchmarks/results/quality_sweep \
        --extra musique_standalone=benchmarks/results/quality_musique_gpu_a,benchmarks/results/quality_musique_gpu_b \
        --extra synthetic_standalone=benchmarks/results/quality_synthetic --out benchmarks/results/quality_sweep

The sweep directory holds one run directory per (dataset, mode, selector group), named
DATASET_MODE_gN (benchmarks/quality_sweep.sh). --extra adds earlier runs of the same harness on the
same examples for a (dataset, mode) (their rows fill candidates the sweep did not re-run). A table
keeps the examples on which every one of its runs is present; `kl_vs_none` is the KL over the
standalone `none` KL of the same examples (the issue's target: <= 0.15 at mean ratio 0.15).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from summarize_quality import load  # noqa: E402

from fusionrag_integrations.evaluation.harness import summarize  # noqa: E402

RATIOS = (0.0, 0.05, 0.15, 0.3, 1.0)
COLUMNS = ["precompute", "selector", "ratio", "n", "kl", "kl_vs_none", "top1", "agree", "rougeL", "f1", "em",
           "recomputed"]  # fmt: skip


def runs_by_set(sweep: Path, extras: list[str]) -> dict[tuple[str, str], list[dict]]:
    """(dataset, mode) -> rows, the sweep's first (an extra run fills only what the sweep lacks)."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for d in sorted(sweep.iterdir()):
        m = re.fullmatch(r"(\w+?)_(standalone|similar)_g\d+(_p\d+)?", d.name)
        if m and (d / "runs.jsonl").exists():
            found[(m.group(1), m.group(2))].append(str(d))
    for extra in extras:
        name, _, dirs = extra.partition("=")
        dataset, mode = name.split("_")
        found[(dataset, mode)] += dirs.split(",")
    return {key: [r for r in load(dirs) if r["ratio"] in RATIOS] for key, dirs in found.items()}


def common_examples(rows: list[dict]) -> set[str]:
    """Examples that have every (selector, ratio) present in these rows."""
    runs = {(r["selector"], r["ratio"]) for r in rows}
    have: dict[str, set] = defaultdict(set)
    for r in rows:
        have[r["example"]].add((r["selector"], r["ratio"]))
    return {ex for ex, got in have.items() if got == runs}


def dataset_table(sets: dict[tuple[str, str], list[dict]], dataset: str) -> list[dict]:
    modes = [m for m in ("standalone", "similar") if (dataset, m) in sets]
    examples = set.intersection(*(common_examples(sets[(dataset, m)]) for m in modes))
    standalone_none = [r for r in sets.get((dataset, "standalone"), []) if r["selector"] == "none"]
    none_kl = {r["example"]: r["kl"] for r in standalone_none if r["example"] in examples}
    table = []
    for mode in modes:
        rows = [r for r in sets[(dataset, mode)] if r["example"] in examples]
        for entry in summarize(rows):
            if mode == "similar" and entry["selector"] == "full":
                continue
            ref = sum(none_kl.values()) / len(none_kl) if none_kl else float("nan")
            table.append({"precompute": mode, **entry, "kl_vs_none": entry["kl"] / ref if ref else float("nan")})
    return table


def markdown(table: list[dict], ttft: bool = False) -> str:
    """ttft: add the TTFT columns (meaningful for runs that had the machine to themselves, e.g. on a CPU)."""
    columns = COLUMNS + (["ttft_ms", "ttft_speedup"] if ttft else [])

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(fmt(row[c]) for c in columns) + " |" for row in table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path)
    p.add_argument("--extra", action="append", default=[], help="DATASET_MODE=DIR[,DIR...]")
    p.add_argument("--out", type=Path)
    p.add_argument("--ttft", action="store_true", help="add TTFT columns (runs with the machine to themselves)")
    args = p.parse_args()
    sets = runs_by_set(args.sweep, args.extra)
    tables = {}
    for dataset in sorted({d for d, _ in sets}):
        tables[dataset] = dataset_table(sets, dataset)
        print(f"\n### {dataset}\n\n{markdown(tables[dataset], args.ttft)}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tables.json").write_text(json.dumps(tables, indent=2))


if __name__ == "__main__":
    main()
