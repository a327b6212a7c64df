"""Fault table: each way a cache directory, a catalog, Redis or the step loop goes wrong, and what the
requests served through it see.

For every fault: the demo corpus (12 passages) is precomputed into a new cache directory, the
fault is applied, and a new engine (a new process where processes are the point; the same engine
for faults that strike while it runs) answers three RAG prompts of four passages each. Then another
new engine answers them again ("after": the first run recomputed and rewrote what it had to).
Columns: every prompt answered; greedy tokens identical to a clean cache's (nothing wrong was
used); chunks reused / computed in the faulted run; the store's counters; chunks reused after.

    python benchmarks/faults.py [--out benchmarks/results/faults_cpu.json] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path  # noqa: E402
from fusionrag_integrations.config import default_model_cache_dir  # noqa: E402
from fusionrag_integrations.demo_corpus import PASSAGES  # noqa: E402
from fusionrag_integrations.store.chunk_kv import write_entry  # noqa: E402

MODELS = default_model_cache_dir()
QUESTIONS = ["Which planets did it visit?", "When did it launch?", "What did it carry?"]
PROMPTS = [
    [{"role": "user", "content": "\n\n".join(PASSAGES[4 * i : 4 * i + 4]) + f"\n\nQuestion: {q}\nAnswer:"}]
    for i, q in enumerate(QUESTIONS)
]
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, {repo!r})
    from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path
    from fusionrag_integrations.demo_corpus import PASSAGES
    config = EngineConfig(cache_dir=sys.argv[2], model_cache_dir={models!r})
    loaded = FusionEngine.from_pretrained(default_model_path(), device="cpu", config=config).loaded
    engine = FusionEngine(loaded, EngineConfig(cache_dir=sys.argv[2], precompute_batch_tokens=256))
    mode = sys.argv[1]
    if mode == "quota":
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
    if mode in ("quota", "ingest", "full"):
        print("ready", flush=True)
        engine.precompute([p + suffix for suffix in ("", " (1)", " (2)") for p in PASSAGES])
    if mode.startswith("write"):
        engine.precompute([p + mode[5:] for p in PASSAGES] + PASSAGES)
    if mode in ("quota", "read", "full"):
        from benchmarks.faults import answers
        ids, reused, computed = answers(engine)
        counts = {{**engine.chunks.store.counts, "catalog_read_only": engine.chunks.catalog.read_only}}
        print(json.dumps({{"ids": ids, "reused": reused, "computed": computed, "counts": counts}}))
    """
)


MOUNTS = {  # run in a private mount namespace ($0 = the cache directory)
    "read-only": 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
    "disk full": 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"',  # 1 MiB: the first entries fill it
}


def child(mode: str, cache: Path, mount: str | None = None, wait: bool = True) -> str | subprocess.Popen:
    script = cache.parent / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), models=str(MODELS)))
    command = [sys.executable, str(script), mode, str(cache)]
    if mount:
        command = ["unshare", "-m", "sh", "-c", MOUNTS[mount], str(cache), *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    if proc.returncode:
        raise RuntimeError(err[-2000:])
    return out


def entry_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("kv/*/??/*.safetensors"))


def catalog(cache: Path) -> Path:
    return next(cache.glob("kv/*/catalog.sqlite"))


def edit_bytes(path: Path, edit: Callable[[bytearray], bytes]) -> None:
    path.write_bytes(edit(bytearray(path.read_bytes())))


def flip(data: bytearray) -> bytes:
    data[-7] ^= 0x20
    return bytes(data)


def swap(cache: Path) -> None:
    a, b = entry_files(cache)[:2]
    tmp = a.with_suffix(".swap")
    a.rename(tmp), b.rename(a), tmp.rename(b)


def plant_rows(cache: Path, how: str) -> None:
    with sqlite3.connect(catalog(cache)) as db:
        keys = [k for (k,) in db.execute("SELECT key FROM chunks ORDER BY rowid")]
        if how == "traversal":
            db.execute("UPDATE chunks SET key = '../../../../etc/hostname' WHERE key = ?", (keys[0],))
        else:  # text 0 pointed at entry 1; entry 0's file removed
            next(p for p in entry_files(cache) if p.stem == keys[0]).unlink()
            db.execute("DELETE FROM chunks WHERE key = ?", (keys[1],))
            db.execute("UPDATE chunks SET key = ? WHERE key = ?", (keys[1], keys[0]))


def damage_pages(cache: Path, how: str) -> None:
    """The catalog's header page left sound (opening it alone succeeds), a table page damaged."""
    path = catalog(cache)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as f:
        size = f.seek(0, 2)
        f.seek(4104 if how == "zeroed" else 4096)
        f.write(bytes(8192 - 4104) if how == "zeroed" else os.urandom(4096 if how == "random" else size - 4096))


def damage_while_running(cache: Path, engine: FusionEngine) -> dict:
    """The running engine's catalog is damaged, another process commits, and the same engine goes on:
    it ingests more, answers, and reports the rebuild."""
    damage_pages(cache, "all")
    with sqlite3.connect(catalog(cache)) as db:
        db.execute("PRAGMA user_version = 7")
    engine.precompute([p + " (later)" for p in PASSAGES[:2]])
    return {"engine": engine}


def redis_data_loss(cache: Path, engine: FusionEngine) -> dict:
    """Redis restarted without persistence under an engine that ingested the corpus: it ingests the
    same texts again (what an app's loader does) and answers; a fresh engine then finds every chunk."""
    server = engine.redis_server
    server.stop()
    server.start()
    time.sleep(1.1)  # the backend's back-off after the failed calls
    engine.precompute(PASSAGES)
    return {"engine": engine}


def scheduler_fault(cache: Path, engine: FusionEngine) -> dict:
    """A request whose sampling broke the step loop (temperature 1e-37) and a step whose forward fails once:
    each fails or answers on its own, and the three prompts are answered after them."""
    engine.generate(PROMPTS[0], max_new_tokens=40, temperature=1e-37, seed=1)
    forward, calls = engine.runner.decode_batch, []

    def fails_once(states):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device fault (injected)")
        return forward(states)

    engine.runner.decode_batch = fails_once
    try:
        engine.generate(PROMPTS[1], max_new_tokens=8)
    except Exception as exc:  # noqa: BLE001 - the injected step failure: typed, retryable
        engine.injected_error = type(exc).__name__
    engine.runner.decode_batch = forward
    return {"engine": engine}


def forge(cache: Path, engine: FusionEngine) -> None:
    import torch

    path = entry_files(cache)[0]
    entry = engine.chunks.get(path.stem)
    entry.k = torch.randn_like(entry.k)
    write_entry(entry, path, secret=b"not-the-cache-key" * 2)


def kill_mid_ingest(cache: Path) -> None:
    proc = child("ingest", cache, wait=False)
    proc.stdout.readline()  # "ready": the model is loaded, ingest starts
    deadline = time.time() + 120
    while len(entry_files(cache)) < 8 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


FAULTS: dict[str, Callable] = {
    "entry truncated (3 of 12)": lambda c, e: [
        edit_bytes(p, lambda d: bytes(d[: len(d) // 2])) for p in entry_files(c)[:3]
    ],
    "entry bit flip (3 of 12)": lambda c, e: [edit_bytes(p, flip) for p in entry_files(c)[:3]],
    "entries swapped (2)": lambda c, e: swap(c),
    "entry header zeroed (3)": lambda c, e: [
        edit_bytes(p, lambda d: bytes(4096) + bytes(d[4096:])) for p in entry_files(c)[:3]
    ],
    "entry forged, not sealed with the key": forge,
    "catalog deleted": lambda c, e: [p.unlink() for p in catalog(c).parent.glob("catalog.sqlite*")],
    "catalog truncated": lambda c, e: [
        edit_bytes(catalog(c), lambda d: bytes(d[: len(d) // 3])),
        *[p.unlink() for p in catalog(c).parent.glob("catalog.sqlite-*")],
    ],
    "catalog malformed": lambda c, e: [
        catalog(c).write_bytes(os.urandom(8192)),
        *[p.unlink() for p in catalog(c).parent.glob("catalog.sqlite-*")],
    ],
    "catalog page zeroed (bytes 4104-8191)": lambda c, e: damage_pages(c, "zeroed"),
    "catalog page garbled (4 KiB at 4096)": lambda c, e: damage_pages(c, "random"),
    "catalog damaged while running": damage_while_running,
    "catalog row: traversal key": lambda c, e: plant_rows(c, "traversal"),
    "catalog row: text A -> entry B": lambda c, e: plant_rows(c, "swap"),
    "folder at entry paths (all 12)": None,  # built on an empty cache below
    "kill -9 mid-ingest (36 chunks)": None,
    "two processes ingest at once": None,
    "read-only mount": None,
    "ulimit -f 256 KiB": None,
    "disk full (1 MiB tmpfs)": None,
    "Redis restarted empty (no persistence)": redis_data_loss,
    "step loop: NaN sampling, a failed forward": scheduler_fault,
}


def start_redis(directory: Path):
    """A redis-server on loopback without persistence (tests/redis_server.py's)."""
    from tests.redis_server import RedisServer

    directory.mkdir(exist_ok=True)
    return RedisServer(directory).start()


def answers(engine: FusionEngine) -> tuple[list[list[int]], int, int]:
    outs = [engine.generate(p, max_new_tokens=12, selector="fusionrag") for p in PROMPTS]
    return (
        [o.token_ids for o in outs],
        sum(o.stats.chunks_reused for o in outs),
        sum(o.stats.chunks_computed for o in outs),
    )


def run_fault(name: str, loaded, clean: list[list[int]], root: Path) -> dict:
    cache = root / name.split(" ")[0].replace(":", "") / f"c{abs(hash(name)) % 10_000}"
    cache.mkdir(parents=True)
    redis = start_redis(root / "redis") if name.startswith("Redis") else None
    remote = {"kv_backend": redis.url} if redis else {}
    new = lambda: FusionEngine(loaded, EngineConfig(cache_dir=cache, **remote))  # noqa: E731
    warm = not name.startswith(("kill", "two", "ulimit", "folder", "disk"))
    writer = new()
    if warm:
        writer.precompute(PASSAGES)
    writer.redis_server = redis
    counts: dict = {}
    same_engine = None
    if FAULTS[name] is not None:
        result = FAULTS[name](cache, writer)
        same_engine = result.get("engine") if isinstance(result, dict) else None
    elif name.startswith("folder"):
        for text in PASSAGES:
            writer.chunks.store.path(writer.layout.job(text, ()).key).mkdir(parents=True)
    elif name.startswith("kill"):
        kill_mid_ingest(cache)
    elif name.startswith("two"):
        a, b = child("write (A)", cache, wait=False), child("write (B)", cache, wait=False)
        a.communicate(timeout=600), b.communicate(timeout=600)
    if same_engine is None:
        del writer
    if name.startswith(("ulimit", "read-only", "disk")):  # the faulted run is a process of its own
        modes = {"ulimit": ("quota", None), "read-only": ("read", "read-only"), "disk": ("full", "disk full")}
        mode, mount = modes[name.split(" ")[0]]
        got = json.loads(child(mode, cache, mount).strip().splitlines()[-1])
        ids, reused, computed, counts = got["ids"], got["reused"], got["computed"], got["counts"]
    else:
        faulted = same_engine or new()
        if name.startswith(("folder", "kill")):  # an app (re)runs its ingest, then asks
            faulted.precompute(PASSAGES)
        ids, reused, computed = answers(faulted)
        counts = {**dict(faulted.chunks.store.counts), **dict(faulted.chunks.counts)}
        counts["kv computed"] = faulted.counters["chunks_computed"]
        counts["temp files left"] = len(list(cache.glob("kv/*/??/.*.tmp")))
        if getattr(faulted, "injected_error", None):
            counts[f"request failed with {faulted.injected_error}"] = 1
        counts["step failures"] = len(faulted.loop.crashes)
        counts["loop healthy"] = int(faulted.status().healthy)
    counts.pop("miss", None)
    if name.startswith("folder"):  # the repair: the folders are removed
        for path in cache.glob("kv/*/??/*.safetensors"):
            path.rmdir()
    after_engine = new()
    after_engine.precompute(PASSAGES)  # what an app (or a vector store insert) runs: only what is missing
    _, after, _ = answers(after_engine)
    if redis is not None:
        redis.stop()
    return {
        "fault": name,
        "answered": ids is not None and len(ids) == len(PROMPTS),
        "same_as_clean": ids == clean,
        "reused": reused,
        "computed": computed,
        "counters": {k: v for k, v in counts.items() if v and k not in ("cpu", "gpu")},
        "reused_after": after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "faults_cpu.json"))
    parser.add_argument("--only", help="run the faults whose name contains this text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fusionrag-faults-") as tmp:
        root = Path(tmp)
        config = EngineConfig(cache_dir=root / "load", model_cache_dir=MODELS)
        loaded = FusionEngine.from_pretrained(default_model_path(), device="cpu", config=config).loaded
        clean_engine = FusionEngine(loaded, EngineConfig(cache_dir=root / "clean"))
        clean_engine.precompute(PASSAGES)
        clean, _, _ = answers(clean_engine)
        rows = [run_fault(name, loaded, clean, root) for name in FAULTS if not args.only or args.only in name]
    print("\n| fault | answered | same tokens as clean | reused / computed | counters | reused after |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        counters = ", ".join(f"{k} {v}" for k, v in sorted(r["counters"].items())) or "-"
        print(
            f"| {r['fault']} | {'yes' if r['answered'] else 'NO'} | {'yes' if r['same_as_clean'] else 'NO'} | "
            f"{r['reused']} / {r['computed']} | {counters} | {r['reused_after']} of 12 |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
