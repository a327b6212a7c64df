"""Merge quality runs (split over processes) into one summary table and plots.

python benchmarks/summarize_quality.py benchmarks/results/quality_musique_a benchmarks/results/quality_musique_b \
    --out benchmarks/results/quality_musique --title "SmolLM2, MuSiQue dev"
python benchmarks/summarize_quality.py --compare STANDALONE_DIR... --similar SIMILAR_DIR... (issue 9's table)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fusionrag_integrations.evaluation.harness import markdown, summarize  # noqa: E402


def load(dirs: list[str]) -> list[dict]:
    rows, seen = [], set()
    for d in dirs:
        for line in (Path(d) / "runs.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                key = (row["example"], row["selector"], row["ratio"])
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
    return rows


def complete_examples(rows: list[dict]) -> set[str]:
    """Examples with every run present (an interrupted example is left out of the table)."""
    runs = {(r["selector"], r["ratio"]) for r in rows}
    have: dict[str, set] = {}
    for r in rows:
        have.setdefault(r["example"], set()).add((r["selector"], r["ratio"]))
    return {ex for ex, got in have.items() if got == runs}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dirs", nargs="*")
    p.add_argument("--out")
    p.add_argument("--title", default="")
    p.add_argument("--similar", nargs="*", help="similarity-guided run dirs: print standalone vs similar")
    args = p.parse_args()
    rows = load(args.dirs)
    done = complete_examples(rows)
    if args.similar:
        sim = load(args.similar)
        both = done & complete_examples(sim)
        keep = {("full", 1.0), ("none", 0.0)} | {(r["selector"], r["ratio"]) for r in sim}
        table = [
            dict(t, precompute="standalone")
            for t in summarize([r for r in rows if r["example"] in both and (r["selector"], r["ratio"]) in keep])
        ]
        table += [
            dict(t, precompute="similar")
            for t in summarize([r for r in sim if r["example"] in both])
            if t["selector"] != "full"
        ]
        cols = ["precompute", "selector", "ratio", "n", "kl", "top1", "agree", "rougeL", "f1", "em"]
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for t in table:
            print("| " + " | ".join(f"{t[c]:.3f}" if isinstance(t[c], float) else str(t[c]) for c in cols) + " |")
        return
    table = summarize([r for r in rows if r["example"] in done])
    text = markdown(table)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(text + "\n")
        (out / "summary.json").write_text(json.dumps(table, indent=2))
        from fusionrag_integrations.evaluation.plots import plot_summary

        for path in plot_summary(table, out / "plots", f"{args.title}, {len(done)} examples"):
            print(f"plot: {path}")


if __name__ == "__main__":
    main()
