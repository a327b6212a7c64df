"""Precompute cost per chunk: standalone vs similarity-guided (each chunk after its k nearest chunks).

python benchmarks/precompute.py --data ../shared/data/musique_dev.json --examples 3 --neighbors 3

Uses real passages (an example's 10 passages form one small collection; neighbours by MiniLM
cosine within it, as the vector stores do). Reports seconds per chunk (median over
examples, each mode on a fresh store) and bytes per chunk in memory and on disk. Only the
chunk's own KV is stored in both modes, so storage per chunk is the same: the similarity-
guided entry replaces nothing and adds nothing but compute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path  # noqa: E402
from fusionrag_integrations.evaluation.data import load_examples, synthetic_examples  # noqa: E402
from fusionrag_integrations.evaluation.harness import NearestPassages  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--examples", type=int, default=3)
    p.add_argument("--neighbors", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    examples = load_examples(args.data, args.examples) if args.data else synthetic_examples(args.examples)
    base = FusionEngine.from_pretrained(args.model or default_model_path(), device=args.device)
    rows = []
    for mode in ("standalone", "similar"):
        per_chunk, tokens, mem_bytes, disk_bytes = [], [], [], []
        for ex in examples:
            with tempfile.TemporaryDirectory() as tmp:
                engine = FusionEngine(base.loaded, EngineConfig(cache_dir=Path(tmp)))
                engine.precompute(ex.passages[:1])  # warm-up: shared prefix, allocator
                neighbors = NearestPassages()(ex.passages, args.neighbors) if mode == "similar" else None
                t = time.perf_counter()
                keys = engine.precompute(ex.passages, neighbors=neighbors)
                per_chunk.append((time.perf_counter() - t) / len(keys))
                entries = [engine.chunks.get(k) for k in keys]
                tokens += [e.num_tokens for e in entries]
                mem_bytes += [e.nbytes for e in entries]
                disk_bytes += [engine.chunks.store.path(k).stat().st_size for k in keys]
        rows.append(
            (
                mode,
                statistics.median(per_chunk) * 1e3,
                statistics.fmean(tokens),
                statistics.fmean(mem_bytes),
                statistics.fmean(disk_bytes),
            )
        )
    print(
        f"\n{base.model_name} on {base.device}, {len(examples)} examples x {len(examples[0].passages)} passages, "
        f"{args.neighbors} neighbours\n"
    )
    print("| precompute | ms per chunk (median) | tokens per chunk | KV bytes per chunk | file bytes per chunk |")
    print("|---|---|---|---|---|")
    for mode, ms, tok, mem, disk in rows:
        print(f"| {mode} | {ms:.0f} | {tok:.0f} | {mem / 1e6:.2f} MB | {disk / 1e6:.2f} MB |")
    print(f"\nsimilar / standalone time per chunk: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
