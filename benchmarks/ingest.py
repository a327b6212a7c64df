"""Ingest throughput: `engine.precompute` end to end (computed, stored in the store's format,
checksummed, written to disk, catalogued) per stored-KV format, and the bytes per token on disk
(issue 19).

GPU: python3 benchmarks/ingest.py --shape llama3-8b --tokenizer DIR --chunks 512 --dir /tmp/ingest
CPU: python benchmarks/ingest.py --chunks 64
Chunks are ~512 tokens of random words. --formats picks the formats (native = the model's dtype);
each format writes into a fresh directory, deleted after it is measured (--keep keeps it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import device_name, markdown_table  # noqa: E402
from serving import build_engine_parts, random_text  # noqa: E402

from fusionrag_integrations import EngineConfig, FusionEngine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["smollm2", "llama3-8b"], default="smollm2")
    p.add_argument("--tokenizer", help="HF tokenizer folder (llama3-8b shape)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--chunks", type=int, default=64)
    p.add_argument("--formats", nargs="+", default=["native", "fp8", "int4"])
    p.add_argument("--dir", default="/tmp/fusionrag-ingest")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--label", default="", help="a name for this code version in the table")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    args = p.parse_args()
    loaded = build_engine_parts(args)
    rng = np.random.default_rng(0)
    texts = [random_text(loaded.tokenizer, 440, rng) for _ in range(args.chunks + 8)]
    cfg = loaded.model.config
    bf16_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # K and V, 2 bytes each
    rows = []
    for kv_format in args.formats:
        directory = Path(args.dir) / kv_format
        shutil.rmtree(directory, ignore_errors=True)
        settings = {"kv_format": kv_format} if kv_format != "native" else {}  # older versions: native only
        engine = FusionEngine(loaded, EngineConfig(cache_dir=directory, **settings))
        engine.precompute(texts[:8], show_progress=False)  # warm-up: kernels, allocator, pinned pool
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        writer = getattr(engine.chunks, "writer", None)  # where the time goes (versions with a writer thread)
        if writer is not None:
            writer.seconds = dict.fromkeys(writer.seconds, 0.0)
        t0 = time.perf_counter()
        keys = engine.precompute(texts[8:], show_progress=False)
        seconds = time.perf_counter() - t0
        files = [engine.chunks.store.path(k) for k in keys]
        disk = sum(f.stat().st_size for f in files)
        tokens = sum(len(engine.layout.chunk_token_ids(t)) for t in texts[8:])
        rows.append({"label": args.label, "kv_format": kv_format, "chunks": len(keys), "seconds": seconds,
                     "chunks_per_s": len(keys) / seconds, "ms_per_chunk": seconds / len(keys) * 1e3,
                     "bytes_per_token": disk / tokens, "vs_bf16": disk / tokens / bf16_per_token,
                     "mb_per_chunk": disk / len(keys) / 1e6,
                     **({f"writer_{k}_s": v for k, v in writer.seconds.items()} if writer else {})})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        del engine
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"\n{device_name(torch.device(args.device))}, {args.shape}, {args.chunks} chunks of ~512 tokens\n")
    cols = ["label", "kv_format", "chunks", "chunks_per_s", "ms_per_chunk", "bytes_per_token", "vs_bf16",
            "writer_writing_s", "writer_waiting_s"]  # fmt: skip
    print(markdown_table(rows, cols))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
