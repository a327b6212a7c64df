"""The shared chunk-KV tier on Redis: what a fetch costs (issue 20).

python3 benchmarks/redis_tier.py                         # Llama-3.1-8B shape, 16K context = 32 chunks
python3 benchmarks/redis_tier.py --redis-server PATH     # a redis-server binary that is not on PATH

Starts its own redis-server on loopback (no persistence), writes 32 random 512-token chunk entries of
the 8B shape per stored format through RedisBackend (write batches of 8 in one pipeline), then reads
one 16K-context request's chunks back the way a request does (one MGET, every value verified: header,
keyed MAC, model fingerprint). Reported per format: bytes per chunk, write MB/s, read ms per 16K request
and MB/s, and how the read splits into the transfer (a bare MGET) and verification; the same entries
read from the local disk backend (page cache warm) for comparison. Medians over --repeats. Writes
benchmarks/results/redis_tier.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import LLAMA31_8B, free_port, markdown_table  # noqa: E402

from fusionrag_integrations.store.backends import LocalDirBackend  # noqa: E402
from fusionrag_integrations.store.chunk_kv import ChunkKV  # noqa: E402
from fusionrag_integrations.store.redis_backend import RedisBackend  # noqa: E402

EXTRA: list[str] = []
SECRET, FINGERPRINT, CHUNK = b"bench-secret-0123456789abcdef012", "bench-model", 512


def start_redis(binary: str, port: int, directory: str) -> subprocess.Popen:
    """A redis-server on loopback without persistence; returns once it answers."""
    import redis

    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory, *EXTRA]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
    for _ in range(400):
        try:
            if redis.Redis(port=port).ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def redis_stores(entries: list, formats: list[str], binary: str, device: torch.device, workdir: str):
    """For benchmarks/ttft.py: per format a ChunkStore with no memory tiers over a Redis backend (every get
    reads Redis), holding `entries` in that format; and the server process (terminate it after)."""
    from fusionrag_integrations.store.tiers import ChunkStore

    port = free_port()
    server = start_redis(binary, port, workdir)
    stores = {}
    for fmt in formats:
        url, fingerprint = f"redis://127.0.0.1:{port}/0", entries[0].model_fingerprint
        store = ChunkStore(fingerprint, device, 0, 0, None, secret=SECRET, remote=(url, fmt))
        for start in range(0, len(entries), 8):
            batch = [e.compacted(fmt) if fmt != "native" else e for e in entries[start : start + 8]]
            assert all(store.persist_many([e.to(torch.device("cpu")) for e in batch])), "a write to Redis failed"
        stores[fmt] = store
    return stores, server


def random_entries(n: int, shape: dict, kv_format: str, seed: int = 0) -> list[ChunkKV]:
    """n chunk entries of `shape` (bf16, as the GPU computes them), stored in `kv_format`."""
    layers, heads = shape["num_hidden_layers"], shape["num_key_value_heads"]
    dim = shape["hidden_size"] // shape["num_attention_heads"]
    gen = torch.Generator().manual_seed(seed)
    entries = []
    for i in range(n):
        k, v = (torch.randn(layers, CHUNK, heads, dim, generator=gen).to(torch.bfloat16) for _ in range(2))
        ids = torch.randint(0, 1000, (CHUNK,), generator=gen)
        entry = ChunkKV(f"{seed * 100_000 + i:064x}", ids, k, v, 1, FINGERPRINT, text=f"chunk {i}")
        entries.append(entry.compacted(kv_format))
    return entries


def median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def measure(fmt: str, entries: list[ChunkKV], backend: RedisBackend, disk: LocalDirBackend, repeats: int) -> dict:
    keys = [e.key for e in entries]
    t0 = time.perf_counter()
    sizes = [s for start in range(0, len(entries), 8) for s in backend.put_many(entries[start : start + 8])]
    write_s = time.perf_counter() - t0
    assert all(sizes), "a write failed"
    for e in entries:
        disk.put(e)
    total = sum(sizes)
    names = [backend.prefix + k for k in keys]
    read, transfer, local = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        got = backend.get_many(keys)
        read.append(time.perf_counter() - t0)
        assert all(g is not None for g in got), "an entry did not verify"
        del got
        t0 = time.perf_counter()
        raw = backend.redis.mget(names)  # the same transfer, nothing verified
        transfer.append(time.perf_counter() - t0)
        del raw
        t0 = time.perf_counter()
        got = [disk.get(k) for k in keys]
        local.append(time.perf_counter() - t0)
        del got
    r, t, d = median(read), median(transfer), median(local)
    return {
        "kv_format": fmt,
        "chunks": len(entries),
        "bytes_per_chunk": total // len(entries),
        "write_mb_s": total / write_s / 1e6,
        "write_ms_per_chunk": write_s * 1e3 / len(entries),
        "read_ms_per_request": r * 1e3,
        "read_mb_s": total / r / 1e6,
        "transfer_ms": t * 1e3,
        "verify_ms": (r - t) * 1e3,
        "local_disk_ms_per_request": d * 1e3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=16384, help="tokens per request (512-token chunks)")
    p.add_argument("--formats", nargs="+", default=["native", "fp8", "int4"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    p.add_argument("--io-threads", type=int, default=1, help="redis-server's I/O threads (io-threads)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "redis_tier.json"))
    args = p.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    n = args.context // CHUNK
    if args.io_threads > 1:
        EXTRA[:] = ["--io-threads", str(args.io_threads)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_redis(args.redis_server, port, tmp)
        try:
            for fmt in args.formats:
                entries = random_entries(n, LLAMA31_8B, fmt)
                backend = RedisBackend(f"redis://127.0.0.1:{port}/0", fmt, FINGERPRINT, SECRET, Counter(), 60.0)
                disk = LocalDirBackend(Path(tmp) / fmt, FINGERPRINT, SECRET, Counter())
                rows.append(measure(fmt, entries, backend, disk, args.repeats))
                backend.redis.flushdb()
                backend.close()
                shutil.rmtree(Path(tmp) / fmt)
                print(markdown_table(rows[-1:], list(rows[-1])), flush=True)
                del entries
        finally:
            server.terminate()
            server.wait()
    columns = list(rows[0])
    print(f"\nLlama-3.1-8B shape, {args.context}-token request = {n} chunks of {CHUNK} tokens, loopback\n")
    print(markdown_table(rows, columns))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"context_tokens": args.context, "io_threads": args.io_threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
