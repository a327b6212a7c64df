"""The disk budget (least recently used entries go after each write batch), `fusionrag cache
stats | prune | verify`, and a bulk ingest killed mid-way leaving nothing partial that is used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from fusionrag_integrations.cli import main as cli_main
from fusionrag_integrations.store.chunk_kv import read_entry
from fusionrag_integrations.store.entry_files import entry_files
from tests.conftest import DOCS, REPO, engine_on, rag_messages


def disk_bytes(directory) -> int:
    return sum(p.stat().st_size for p in entry_files(directory))


def test_the_disk_budget_holds_after_every_batch_of_10000_chunks(tiny_engines, tmp_path):
    loaded = tiny_engines["llama"].loaded
    probe = engine_on(loaded, tmp_path / "probe")
    probe.precompute(["Chunk number 0 of the budget test."])
    per_entry = disk_bytes(probe.chunks.store.directory)
    budget = 300 * per_entry  # room for 300 of the 10,000
    engine = engine_on(loaded, tmp_path / "c", disk_cache_bytes=budget, precompute_batch_tokens=2048,
                       cpu_cache_bytes=1 << 20)  # fmt: skip
    registry, sizes, order = engine.chunks, [], []
    persist = registry.persister._persist

    def checked(batch):  # after every write batch, as the writer thread finishes it
        persist(batch)
        sizes.append(disk_bytes(registry.store.directory))
        order.extend(item[1].key for item in batch)

    registry.persister.writer._write = checked
    texts = [f"Chunk number {i} of the budget test." for i in range(10_000)]
    engine.precompute(texts, show_progress=False)
    assert len(sizes) > 20 and max(sizes) <= budget and sizes[-1] >= budget - 2 * per_entry
    assert registry.counts["evicted_from_disk"] >= 10_000 - 300
    assert registry.catalog.disk_bytes() == disk_bytes(registry.store.directory)
    on_disk = {p.name[: -len(".safetensors")] for p in entry_files(registry.store.directory)}
    assert on_disk == set(order[-len(on_disk) :])  # the most recently written survive
    survivors = [t for t in texts if engine.layout.job(t, []).key in on_disk]
    again = engine_on(loaded, tmp_path / "c", disk_cache_bytes=budget)  # a new process reuses them
    again.precompute(survivors[:20], show_progress=False)
    assert again.counters["chunks_computed"] == 0


def test_cache_commands_stats_prune_verify(smol_engine, tmp_path, capsys):
    for kv_format in ("native", "int4"):
        engine_on(smol_engine.loaded, tmp_path, kv_format=kv_format).precompute(DOCS)
    assert cli_main(["cache", "stats", "--cache-dir", str(tmp_path)]) == 0
    stores = json.loads(capsys.readouterr().out)
    assert sorted((s["formats"] for s in stores), key=str) == sorted([{"native": 4}, {"int4": 4}], key=str)
    assert all(s["entries"] == s["catalogued"] == 4 for s in stores)
    total = sum(s["bytes"] for s in stores)
    victim = next(entry_files(tmp_path / "kv" / stores[0]["store"]))
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert cli_main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"verified": 7, "removed": 1}
    assert cli_main(["cache", "prune", "--cache-dir", str(tmp_path), "--max-bytes", str(total // 3)]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["bytes"] <= total // 3 and pruned["removed"] >= 1
    assert sum(disk_bytes(tmp_path / "kv" / s["store"]) for s in stores) == pruned["bytes"]
    reader = engine_on(smol_engine.loaded, tmp_path)  # what is left still serves; pruned chunks are forgotten
    out = reader.generate(rag_messages(DOCS), max_new_tokens=4)
    assert out.stats.chunks_found == out.stats.chunks_reused == len(reader.chunks) < 4
    assert reader.chunks.store.counts["corrupt"] == 0


CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path
    engine = FusionEngine.from_pretrained(default_model_path(), device="cpu",
        config=EngineConfig(cache_dir={cache!r}, kv_format="int4", precompute_batch_tokens=256))
    print("ready", flush=True)
    engine.precompute([f"Passage {{i}}: " + "the tide tables of Kellersby harbour. " * 12 for i in range(400)])
    """
)


def test_a_bulk_ingest_killed_midway_leaves_nothing_partial_in_use(smol_engine, tmp_path):
    cache = tmp_path / "c"
    script = CHILD.format(repo=str(REPO), cache=str(cache))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert child.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(cache.glob("kv/*/??/*.safetensors"))) < 20:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)  # mid-way: writes, temp files and catalog rows in flight
    child.wait(timeout=60)
    written = list(cache.glob("kv/*/??/*.safetensors"))
    assert 20 <= len(written) < 400
    reader = engine_on(smol_engine.loaded, cache, kv_format="int4")
    for path in entry_files(reader.chunks.store.directory):  # every file there is complete and verified
        key = path.name[: -len(".safetensors")]
        read_entry(path, key, smol_engine.loaded.model_fingerprint, reader.chunks.store.secret)
    assert reader.chunks.store.counts["corrupt"] == 0 and len(reader.chunks) >= len(written)


class CountedSlots:
    """PinnedStaging's contract without a GPU: `slots` copies in flight at most; a copy waits for a slot."""

    def __init__(self, slots: int) -> None:
        self.free = threading.Semaphore(slots)

    def copy(self, entry):
        if not self.free.acquire(timeout=20):
            raise TimeoutError("no staging slot came back: the writer never got the staged copies")
        return entry, object()

    def release(self, slot) -> None:
        self.free.release()


def test_a_batch_larger_than_the_staging_slots_does_not_wait_forever(tiny_engines, tmp_path):
    """One add() of more entries than there are staging slots (small chunks on a GPU): staged copies are
    handed to the writer as they go, so the slots come back."""
    engine = engine_on(tiny_engines["llama"].loaded, tmp_path / "c")
    registry = engine.chunks
    registry.persister.staging, registry.persister._staged = CountedSlots(48), lambda entry: True
    texts = [f"Short chunk {i} about the harbour." for i in range(150)]
    keys = engine.precompute(texts, show_progress=False)  # one batch: 150 entries, 48 slots
    assert all(registry.store.backend.contains(k) for k in keys)
