"""`fusionrag serve`: its flags, the set-ups it refuses, and the server's run (one process, or Ray
Serve replicas). Everything that can be checked before the model loads is: the key, the address, the
limits, the port (bound first, so a port in use is a one-line error in a second, not after 20 s)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..engine import FusionEngine

EXIT_FAILED = 1  # the engine stopped after repeated failures: a supervisor should restart the process


def run_server(args: argparse.Namespace, settings, make_engine: Callable[[argparse.Namespace], FusionEngine]) -> int:
    """One process serving the engine `make_engine` builds from the flags (the cli owns that, and
    dispatches --replicas to replicas/ before this)."""
    from .app import create_app
    from .protocol import bind, server

    try:
        sock = bind(args.host, args.port)  # before the model loads: a port in use is known in a second
    except OSError as err:
        raise InvalidArgumentError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    engine = make_engine(args)
    name = args.served_model_name or engine.loaded.name
    failed: list[bool] = []
    uvicorn_server: Any = None  # set below: on_fatal needs it first

    def on_fatal() -> None:
        failed.append(True)
        uvicorn_server.should_exit = True

    drain = lambda: engine.stop(drain=settings.timeout_graceful_shutdown_s)  # noqa: E731
    uvicorn_server = server(create_app(engine, name, settings, on_fatal), settings, args.access_log, drain)
    print(f"fusionrag: serving {name!r} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    uvicorn_server.run(sockets=[sock])
    return EXIT_FAILED if failed else 0


LOOPBACK = ("127.", "::1", "localhost")


def serve_settings(args: argparse.Namespace):
    """The server's limits from the flags, and the set-ups refused with one line: an empty key, a
    non-loopback address without a key (unless --allow-unauthenticated), sizes that cannot work."""
    import os

    from pydantic import ValidationError

    from .settings import ServerSettings

    keys = list(args.api_key or [])
    env = os.environ.get("FUSIONRAG_API_KEY")
    if not keys and env is not None:
        keys = [env]
    if any(not k.strip() for k in keys):
        raise InvalidArgumentError("the API key is empty (--api-key or $FUSIONRAG_API_KEY): give a real key")
    if not keys and not args.host.startswith(LOOPBACK) and not args.allow_unauthenticated:
        raise InvalidArgumentError(
            f"--host {args.host} is reachable from other machines and no API key is set: give --api-key KEY "
            "(or $FUSIONRAG_API_KEY), or --allow-unauthenticated to serve it open"
        )
    fields = {
        "api_keys": tuple(keys),
        "allow_unauthenticated": args.allow_unauthenticated,
        "max_body_bytes": args.max_body_bytes,
        "max_headers": args.max_headers,
        "timeout_header_s": args.timeout_header,
        "timeout_body_s": args.timeout_body,
        "timeout_keep_alive_s": args.timeout_keep_alive,
        "timeout_graceful_shutdown_s": args.timeout_graceful_shutdown,
        "max_chunk_texts": args.max_chunk_texts,
        "metrics_public": args.metrics_public,
        "embedding_model": args.embedding_model,
    }
    if args.max_connections is not None:
        fields["max_connections"] = args.max_connections
    try:
        settings = ServerSettings(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        raise InvalidArgumentError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    return settings, (keys[0] if keys else None)


def port(value: str) -> int:
    number = int(value)
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1-65535)")
    return number


def share(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value} is not a share (0 to 1)")
    return number


def engine_flags(args: argparse.Namespace) -> dict:
    """The serve flags that are EngineConfig fields (only those given), under vLLM's names where vLLM has
    one; the fidelity guard's go into `fusion`."""
    top = {
        "max_model_len": "max_model_len",
        "max_num_seqs": "max_running_requests",
        "max_num_batched_tokens": "max_prefill_tokens",
        "gpu_memory_utilization": "gpu_memory_utilization",
    }
    fusion = {"fidelity": "fidelity", "fidelity_target": "fidelity_target"}
    given = lambda names: {f: getattr(args, a) for a, f in names.items() if getattr(args, a, None) is not None}  # noqa: E731
    return {**given(top), **({"fusion": given(fusion)} if given(fusion) else {})}


def expand_config_file(argv: list[str]) -> list[str]:
    """`serve --config FILE.yaml`: the file's keys become flags placed before the command line's own, so
    the command line wins (vLLM's rule). Keys are flag names (max_num_seqs or max-num-seqs; `model` is the
    positional); an unknown key fails as an unknown flag would, naming it."""
    if "serve" not in argv or not any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    at = next(i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config="))
    path = argv[at].split("=", 1)[1] if "=" in argv[at] else (argv[at + 1] if at + 1 < len(argv) else "")
    rest = argv[:at] + argv[at + (1 if "=" in argv[at] else 2) :]
    import yaml

    try:
        loaded = yaml.safe_load(open(path, encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InvalidArgumentError(f"--config {path}: {err}") from None
    if not isinstance(loaded, dict):
        raise InvalidArgumentError(f"--config {path}: expected a mapping of flag names to values")
    flags: list[str] = []
    for key, value in loaded.items():
        name = "--" + str(key).replace("_", "-")
        if key == "model":
            flags.append(str(value))
        elif value is True:
            flags.append(name)
        elif isinstance(value, list):
            flags += [part for item in value for part in (name, str(item))]
        elif value is not False and value is not None:
            flags += [name, str(value)]
    cut = rest.index("serve") + 1
    return rest[:cut] + flags + rest[cut:]


def add_serve_command(sub) -> argparse.ArgumentParser:
    serve = sub.add_parser("serve", help="an OpenAI-compatible server (chat/completions, completions, chunks)")
    serve.add_argument("model", nargs="?", help="HF directory, .gguf file or cached hub id (default: bundled SmolLM2)")
    serve.add_argument("--config", help="a YAML file of flags (max_num_seqs: 16, ...); the command line wins")
    serve.add_argument("--max-model-len", type=int, help="most tokens (prompt + answer) a request may use")
    serve.add_argument("--max-num-seqs", type=int, help="most requests running at once (default: by memory)")
    serve.add_argument("--max-num-batched-tokens", type=int, help="most prompt tokens prefilled in one step")
    serve.add_argument(
        "--gpu-memory-utilization",
        type=share,
        help="share of the GPU's memory the engine may use, weights included (default: 90%% of what is free)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=port, default=8000, help="port (default 8000)")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    serve.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    serve.add_argument(
        "--cache-dir", help="chunk-KV cache directory (default $FUSIONRAG_CACHE_DIR or ~/.cache/fusionrag)"
    )
    serve.add_argument(
        "--api-key",
        action="append",
        help="require `Authorization: Bearer KEY` (default $FUSIONRAG_API_KEY); repeat for several "
        "keys: each key's clients then get their own chunk cache space",
    )
    serve.add_argument(
        "--allow-unauthenticated", action="store_true", help="serve without a key on an address other machines reach"
    )
    serve.add_argument("--kv-format", choices=["native", "fp8", "int4"], help="stored chunk-KV format (default native)")
    serve.add_argument("--served-model-name", help="the model id clients send (default: the model's name)")
    serve.add_argument("--max-body-bytes", type=int, default=8 << 20, help="largest request body (default 8 MiB)")
    serve.add_argument("--max-headers", type=int, default=100, help="most header fields in a request (default 100)")
    serve.add_argument(
        "--timeout-header",
        type=float,
        default=10.0,
        help="seconds a connection has to send a complete request head (default 10)",
    )
    serve.add_argument(
        "--timeout-body", type=float, default=30.0, help="seconds a request has to send its whole body (default 30)"
    )
    serve.add_argument("--timeout-keep-alive", type=int, default=5, help="idle seconds between requests (default 5)")
    serve.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=30.0,
        help="on SIGTERM: seconds running requests have to finish (default 30)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        help="open connections at most (default: the file-descriptor limit less a reserve)",
    )
    serve.add_argument("--max-chunk-texts", type=int, default=256, help="texts per /v1/chunks request (default 256)")
    serve.add_argument("--metrics-public", action="store_true", help="/metrics without the API key")
    serve.add_argument(
        "--embedding-model", help="/v1/embeddings: a sentence-embedding model folder (default: bundled MiniLM)"
    )
    serve.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    serve.add_argument(
        "--fidelity-sample-rate", type=share, help="share of fused requests measured against full attention (default 0)"
    )
    serve.add_argument(
        "--fidelity",
        choices=["off", "guarded"],
        help="guarded: a fused request predicted to drift from full attention is prefilled in full "
        "(default off; requests may choose)",
    )
    serve.add_argument(
        "--fidelity-target",
        type=share,
        help="teacher-forced agreement to hold by moving the guard threshold and base ratio "
        "(needs --fidelity-sample-rate)",
    )
    serve.add_argument("--kv-backend", help="shared chunk-KV tier and catalog, e.g. redis://127.0.0.1:6379/0")
    serve.add_argument("--replicas", type=int, help="N engines on Ray Serve behind this endpoint (one per GPU)")
    serve.add_argument(
        "--routing",
        choices=["chunk", "round_robin"],
        default="chunk",
        help="replicas: to the one holding the request's chunks (default) or in turn",
    )
    serve.add_argument("--ray-address", help="replicas: an existing Ray cluster (default: start a local one)")
    serve.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return serve
