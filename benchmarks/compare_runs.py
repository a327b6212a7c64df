"""Compare two `fusionrag bench quality` runs row by row: are the greedy outputs identical?

    python benchmarks/compare_runs.py BEFORE/runs.jsonl AFTER/runs.jsonl [--out results/x.json]

Used to show that a refactor changed no behaviour: every (example, selector, ratio) row of the
second run must produce the same text as the first; KL differences are reported too.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path


def rows(path: str) -> dict[tuple, dict]:
    lines = Path(path).read_text().splitlines()
    return {(r["example"], r["selector"], r["ratio"]): r for r in map(json.loads, filter(None, lines))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--out")
    args = p.parse_args()
    before, after = rows(args.before), rows(args.after)
    shared = sorted(set(before) & set(after), key=str)
    by_selector: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    max_kl = 0.0
    for key in shared:
        same = before[key]["text"] == after[key]["text"]
        by_selector[key[1]][0] += same
        by_selector[key[1]][1] += 1
        max_kl = max(max_kl, abs(before[key].get("kl", 0.0) - after[key].get("kl", 0.0)))
    print("| selector | identical greedy outputs |\n|---|---|")
    for name, (same, total) in sorted(by_selector.items()):
        print(f"| {name} | {same}/{total} |")
    total_same = sum(s for s, _ in by_selector.values())
    only = len(set(before) ^ set(after))
    print(f"\n{total_same}/{len(shared)} rows identical; max |KL diff| {max_kl:.2e}; rows in one run only: {only}")
    if args.out:
        summary = {"rows": len(shared), "identical": total_same, "max_kl_diff": max_kl, "only_in_one": only}
        Path(args.out).write_text(json.dumps({**summary, "by_selector": by_selector}, indent=2))


if __name__ == "__main__":
    main()
