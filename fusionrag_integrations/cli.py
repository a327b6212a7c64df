"""`fusionrag` console script: thin wrappers over the public API."""

from __future__ import annotations

import argparse
import sys

from . import EngineConfig, FusionEngine, default_model_path


def _engine(args: argparse.Namespace) -> FusionEngine:
    return FusionEngine.from_pretrained(
        args.model or default_model_path(), device=args.device, dtype=args.dtype, config=EngineConfig()
    )


def cmd_generate(args: argparse.Namespace) -> int:
    engine = _engine(args)
    prompt = args.prompt if args.raw else [{"role": "user", "content": args.prompt}]
    last = None
    for piece in engine.stream(
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
    ):
        print(piece.text, end="", flush=True)
        last = piece
    print()
    if args.stats and last is not None:
        print(last.stats, file=sys.stderr)
    return 0


def cmd_precompute(args: argparse.Namespace) -> int:
    """Warm the persistent chunk-KV cache from text files: one chunk per paragraph (blank-line separated),
    or per file with --whole-files. Later prompts containing these texts reuse their KV."""
    import time
    from pathlib import Path

    texts = []
    for name in args.files:
        text = Path(name).read_text()
        texts += [text] if args.whole_files else [p for p in text.split("\n\n") if p.strip()]
    engine = _engine(args)
    t = time.perf_counter()
    keys = engine.precompute(texts, show_progress=True)
    print(
        f"{len(set(keys))} chunks ({engine.counters['chunks_computed']} computed now, the rest already cached) "
        f"in {time.perf_counter() - t:.1f} s, cache: {engine.config.cache_dir}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(model=args.model, device=args.device)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "quality":
        from .evaluation.cli import main as quality_main

        return quality_main(args.rest)
    raise SystemExit(f"unknown benchmark {args.what!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionrag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="HF directory, .gguf file or cached hub id (default: bundled SmolLM2)")
        p.add_argument("--device", default="auto")
        p.add_argument("--dtype", default="auto")

    gen = sub.add_parser("generate", help="answer one prompt, streaming")
    gen.add_argument("prompt")
    model_args(gen)
    gen.add_argument("--raw", action="store_true", help="send the prompt as plain text, not as a chat message")
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append")
    gen.add_argument("--stats", action="store_true", help="print timing and reuse stats to stderr")
    gen.set_defaults(func=cmd_generate)

    pre = sub.add_parser("precompute", help="precompute the KV of text files' paragraphs into the persistent cache")
    pre.add_argument("files", nargs="+")
    model_args(pre)
    pre.add_argument("--whole-files", action="store_true", help="one chunk per file instead of per paragraph")
    pre.set_defaults(func=cmd_precompute)

    bench = sub.add_parser("bench", help="benchmarks: `fusionrag bench quality --help`", add_help=False)
    bench.add_argument("what", choices=["quality"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser("demo", help="the README demo")
    model_args(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
