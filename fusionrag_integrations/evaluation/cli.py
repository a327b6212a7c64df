"""`fusionrag bench quality`: every selector at every ratio against full attention, with tables."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from .data import load_examples, synthetic_examples
from .harness import evaluate, markdown, summarize

DEFAULT_SELECTORS = ["epic", "cacheblend", "fusionrag", "qcfuse", "cacheclip", "hybrid"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusionrag bench quality", description=__doc__)
    p.add_argument("--model", help="HF directory, .gguf or cached hub id (default: bundled SmolLM2)")
    p.add_argument("--data", help="CacheBlend-style JSON ({ctxs, question, answers} list)")
    p.add_argument("--synthetic", type=int, default=0, help="add N seeded synthetic two-hop questions")
    p.add_argument(
        "--selectors",
        nargs="+",
        default=DEFAULT_SELECTORS,
        help="selectors compared with full attention; a variant as name:key=value,... (evaluation/variants.py)",
    )
    p.add_argument("--ratios", nargs="+", type=float, default=[0.05, 0.10, 0.15, 0.30], help="recompute ratios to run")
    p.add_argument("--limit", type=int, help="at most this many examples from --data")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length (greedy) per example")
    p.add_argument(
        "--profile-examples",
        type=int,
        default=5,
        help="synthetic examples (a disjoint seed) used to profile QCFuse's critical layer",
    )
    p.add_argument(
        "--out",
        default="fusionrag-quality",
        help="output directory (runs.jsonl, summary, plots); a rerun resumes it (default ./fusionrag-quality)",
    )
    p.add_argument("--cache-dir", default=".cache/bench", help="chunk-KV cache directory (default .cache/bench)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--precompute",
        choices=["standalone", "similar"],
        default="standalone",
        help="chunk KV computed alone, or after its most similar passages (FusionRAG's offline stage)",
    )
    p.add_argument("--critical-layer", type=int, help="QCFuse's layer (default: profiled on --profile-examples)")
    p.add_argument(
        "--store-gb",
        type=float,
        nargs=3,
        metavar=("GPU", "CPU", "DISK"),
        help="byte budgets of the chunk store's tiers in GB (several runs sharing a machine; default: the engine's)",
    )
    p.add_argument("--kv-format", default="native", choices=["native", "fp8", "int4"], help="stored chunk-KV format")
    p.add_argument("--neighbors", type=int, default=3, help="neighbours per passage with --precompute similar")
    p.add_argument(
        "--neighbor-pool",
        choices=["example", "dataset"],
        default="dataset",
        help="where --precompute similar finds neighbours: the example's own passages, or every passage of "
        "the loaded examples (a store holding the whole dataset; default)",
    )
    p.add_argument("--offset", type=int, default=0, help="skip this many examples of --data (to split a run)")
    p.add_argument(
        "--part",
        default="1/1",
        help="I/K: run the I-th of K equal parts of the loaded examples (splits a run over processes; the "
        "neighbour pool stays every loaded example)",
    )
    return p


def store_budgets(gigabytes: list[float] | None) -> dict[str, int]:
    if gigabytes is None:
        return {}
    names = ("gpu_cache_bytes", "cpu_cache_bytes", "disk_cache_bytes")
    return {name: int(gb * 1e9) for name, gb in zip(names, gigabytes)}


def neighbor_finder(pool: str, examples: list) -> Callable[[list[str], int], list[list[str]]]:
    """Nearest passages from the chosen pool (benchmarks/device_quality.py swaps in a precomputed table)."""
    from .harness import NearestPassages

    return NearestPassages([p for ex in examples for p in ex.passages] if pool == "dataset" else None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit is not None and not args.data:
        parser.error("--limit applies to --data examples; pass --data FILE (or --synthetic N for N examples)")
    if not args.data and not args.synthetic:
        parser.error("no examples: pass --data FILE and/or --synthetic N")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .. import EngineConfig, FusionConfig, FusionEngine, default_model_path
    from ..fusion.probe import profile_critical_layer
    from .prompts import musique_messages

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    examples = (
        load_examples(args.data, args.offset + args.limit if args.limit else None)[args.offset :] if args.data else []
    )
    examples += synthetic_examples(args.synthetic, seed=0) if args.synthetic else []
    pool = examples
    index, _, parts = args.part.partition("/")
    if not (index.isdigit() and parts.isdigit() and 1 <= int(index) <= int(parts)):
        parser.error(f"--part must be I/K with 1 <= I <= K, got {args.part!r}")
    size = -(-len(examples) // int(parts))
    examples = examples[(int(index) - 1) * size : int(index) * size]
    engine = FusionEngine.from_pretrained(
        args.model or default_model_path(),
        device=args.device,
        dtype=args.dtype,
        config=EngineConfig(
            cache_dir=Path(args.cache_dir),
            kv_format=args.kv_format,
            fusion=FusionConfig(critical_layer=args.critical_layer),
            **store_budgets(args.store_gb),
        ),
    )
    if "qcfuse" in args.selectors and args.critical_layer is None:  # profiled on its own samples: runs comparable
        print(f"profiling QCFuse's critical layer on {args.profile_examples} examples (once per run)...", flush=True)
        samples = synthetic_examples(args.profile_examples, seed=12345)
        contexts = []
        for ex in samples:
            engine.precompute(ex.passages)
            contexts.append(engine.fusion_context(musique_messages(ex)))
        layer, recall = profile_critical_layer(contexts)
        engine.critical_layers.put(engine.loaded.model_fingerprint, layer, recall, len(contexts))
        (out / "critical_layer.json").write_text(json.dumps({"layer": layer, "recall": recall}))
        print(f"QCFuse critical layer: {layer} (probe recall {recall[layer]:.2f})")
    rows = evaluate(
        engine,
        examples,
        args.selectors,
        args.ratios,
        out / "runs.jsonl",
        args.max_new_tokens,
        precompute=args.precompute,
        neighbors=args.neighbors,
        nearest=neighbor_finder(args.neighbor_pool, pool),
    )
    table = summarize(rows)
    (out / "summary.json").write_text(json.dumps(table, indent=2))
    text = markdown(table)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    from .plots import plot_summary

    name = Path(args.data).stem if args.data else f"synthetic-{args.synthetic}"
    for path in plot_summary(table, out / "plots", f"{engine.model_name}, {name}, {len(examples)} examples"):
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
