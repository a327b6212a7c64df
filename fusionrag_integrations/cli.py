"""`fusionrag`: answer a prompt, warm the chunk-KV cache, run the demo or the quality benchmark.

Every failure the package recognises (a missing model, a bad argument, no CUDA) is one line on
stderr and exit code 2; --debug shows the traceback. Stats print as a small table, or as JSON
with --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import EngineConfig, FusionEngine, FusionRAGError, default_model_path
from .errors import EmptyPromptError, InvalidArgumentError

EXIT_USAGE = 2


def _engine(args: argparse.Namespace) -> FusionEngine:
    settings = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    if getattr(args, "kv_format", None):
        settings["kv_format"] = args.kv_format
    if getattr(args, "kv_backend", None):
        settings["kv_backend"] = args.kv_backend
    if getattr(args, "fidelity_sample_rate", None) is not None:
        settings["fidelity_sample_rate"] = args.fidelity_sample_rate
    from .server.command import engine_flags  # the serve command's flags (it imports this module lazily)

    settings.update(engine_flags(args))
    return FusionEngine.from_pretrained(
        args.model or default_model_path(), device=args.device, dtype=args.dtype, config=EngineConfig(**settings)
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """One server process (server/), or --replicas engines on Ray Serve behind one endpoint (replicas/)."""
    from .server.command import run_server, serve_settings

    settings, api_key = serve_settings(args)
    if args.replicas:
        from .replicas.ray_app import serve_from_cli

        return serve_from_cli(args, api_key)
    return run_server(args, settings, _engine)


def stats_table(stats: dict, usage: dict | None = None) -> str:
    """Two aligned columns, the numbers people look at first on top."""
    rows = {**(usage or {}), **stats}
    width = max(len(k) for k in rows)
    lines = []
    for key, value in rows.items():
        shown = f"{value:.1f}" if isinstance(value, float) else "-" if value is None else str(value)
        lines.append(f"{key.ljust(width)}  {shown}")
    return "\n".join(lines)


def cmd_generate(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise EmptyPromptError('the prompt is empty: pass the text to answer, e.g. fusionrag generate "Hello"')
    engine = _engine(args)
    prompt = args.prompt if args.raw else [{"role": "user", "content": args.prompt}]
    text, last = [], None
    for piece in engine.stream(
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
        selector=args.selector,
        recompute_ratio=args.recompute_ratio,
    ):
        text.append(piece.text)
        if not args.json:
            print(piece.text, end="", flush=True)
        last = piece
    # the stream's last piece always carries finish_reason, usage and stats
    assert last is not None and last.usage is not None and last.stats is not None
    if args.json:
        print(
            json.dumps(
                {
                    "text": "".join(text),
                    "finish_reason": last.finish_reason,
                    "usage": last.usage.to_dict(),
                    "stats": last.stats.to_dict(),
                }
            )
        )
        return 0
    print()
    if args.stats:
        print(stats_table(last.stats.to_dict(), last.usage.to_dict()), file=sys.stderr)
    return 0


def cmd_precompute(args: argparse.Namespace) -> int:
    """Warm the persistent chunk-KV cache from text files: one chunk per paragraph (blank-line separated),
    or per file with --whole-files. Later prompts containing these texts reuse their KV."""
    texts = []
    for name in args.files:
        text = Path(name).expanduser().read_text()
        texts += [text] if args.whole_files else [p for p in text.split("\n\n") if p.strip()]
    engine = _engine(args)
    t = time.perf_counter()
    keys = engine.precompute(texts, show_progress=True)
    summary = {
        "chunks": len(set(keys)),
        "computed_now": engine.counters["chunks_computed"],
        "seconds": round(time.perf_counter() - t, 2),
        "cache_dir": str(engine.config.cache_dir),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['chunks']} chunks ({summary['computed_now']} computed now, the rest already cached) "
            f"in {summary['seconds']:.1f} s, cache: {summary['cache_dir']}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(model=args.model, device=args.device, cache_dir=args.cache_dir or ".cache/demo")


def cmd_bench(args: argparse.Namespace) -> int:
    from .evaluation.cli import main as quality_main

    return quality_main(args.rest)


def cmd_cache(args: argparse.Namespace) -> int:
    from .config import default_cache_dir
    from .store import maintenance

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.action == "stats":
        result: object = maintenance.stats(cache_dir)
    elif args.action == "prune":
        if args.max_bytes is None:
            raise InvalidArgumentError("prune needs --max-bytes")
        result = maintenance.prune(cache_dir, args.max_bytes)
    else:
        result = maintenance.verify(cache_dir)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusionrag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="HF directory, .gguf file or cached hub id (default: the bundled SmolLM2)")
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
        p.add_argument(
            "--dtype", default="auto", help="float32, bfloat16, float16 or auto (bfloat16 on CUDA, float32 on CPU)"
        )
        p.add_argument(
            "--cache-dir", help="chunk-KV cache directory (default $FUSIONRAG_CACHE_DIR or ~/.cache/fusionrag)"
        )
        p.add_argument("--json", action="store_true", help="print the result as one JSON object")
        p.add_argument("--kv-format", choices=["native", "fp8", "int4"], help="stored chunk-KV format (default native)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    gen = sub.add_parser("generate", help="answer one prompt, streaming")
    gen.add_argument("prompt", help="the text to answer (sent as a user message unless --raw)")
    common(gen)
    gen.add_argument("--raw", action="store_true", help="send the prompt as plain text, not as a chat message")
    gen.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    gen.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1)")
    gen.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens; 0 = off")
    gen.add_argument("--seed", type=int, help="random seed for sampling (reproducible output)")
    gen.add_argument("--stop", action="append", help="stop at this text (repeat for several)")
    gen.add_argument(
        "--selector",
        help="token selector for cached chunks (hybrid: the default, full, none, epic, cacheblend, fusionrag, qcfuse, "
        "cacheclip)",
    )
    gen.add_argument("--recompute-ratio", type=float, help="share of chunk tokens recomputed, in [0, 1]")
    gen.add_argument("--stats", action="store_true", help="print timing and reuse stats to stderr")
    gen.set_defaults(func=cmd_generate)

    pre = sub.add_parser("precompute", help="precompute the KV of text files' paragraphs into the persistent cache")
    pre.add_argument("files", nargs="+", help="text files; each blank-line separated paragraph is one chunk")
    common(pre)
    pre.add_argument("--whole-files", action="store_true", help="one chunk per file instead of per paragraph")
    pre.set_defaults(func=cmd_precompute)

    bench = sub.add_parser("bench", help="benchmarks: `fusionrag bench quality --help`", add_help=False)
    bench.add_argument("what", choices=["quality"], help="which benchmark")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(func=cmd_bench)

    from .server.command import add_serve_command

    add_serve_command(sub).set_defaults(func=cmd_serve)

    cache = sub.add_parser("cache", help="the persistent chunk-KV cache: stats, prune to a size, verify every entry")
    cache.add_argument("action", choices=["stats", "prune", "verify"], help="stats, prune (--max-bytes) or verify")
    cache.add_argument("--cache-dir", help="cache directory (default $FUSIONRAG_CACHE_DIR or ~/.cache/fusionrag)")
    cache.add_argument("--max-bytes", type=int, help="prune: delete least recently used entries down to this size")
    cache.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    cache.set_defaults(func=cmd_cache)

    demo = sub.add_parser("demo", help="the README demo (LangChain RAG over a persistent Chroma store)")
    demo.add_argument("--model", help="HF directory, .gguf file or cached hub id (default: the bundled SmolLM2)")
    demo.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    demo.add_argument("--cache-dir", help="where the demo keeps its Chroma store and chunk KV (default .cache/demo)")
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    demo.set_defaults(func=cmd_demo)
    return parser


def run(func: Callable[[], int], debug: bool) -> int:
    """User errors are one line and exit code 2; --debug re-raises them with the traceback."""
    try:
        return func()
    except (FusionRAGError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        if debug:
            raise
        print(f"fusionrag: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fusionrag: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    from .server.command import expand_config_file

    raw = sys.argv[1:] if argv is None else list(argv)
    try:
        raw = expand_config_file(raw)
    except FusionRAGError as err:
        print(f"fusionrag: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(raw)
    # progress of slow one-time steps (model conversion) goes to stderr; details only with --debug
    logging.basicConfig(format="fusionrag: %(message)s", stream=sys.stderr)
    logging.getLogger("fusionrag_integrations").setLevel(logging.DEBUG if args.debug else logging.INFO)
    return run(lambda: args.func(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
