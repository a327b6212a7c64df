"""The chunk-KV store: bit-identical round trips, LRU tiers, corrupt entries, several processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fusionrag_integrations.store.chunk_kv import ChunkKV, CorruptEntryError, read_entry, write_entry
from fusionrag_integrations.store.tiers import ChunkStore, LRUTier
from tests.conftest import DOCS, MODELS, REPO, engine_on, rag_messages

SECRET = b"s" * 32


def random_entry(key: str = "d" * 64, tokens: int = 7) -> ChunkKV:
    g = torch.Generator().manual_seed(len(key) + tokens)
    return ChunkKV(
        key,
        torch.randint(0, 1000, (tokens,), generator=g),
        torch.randn(2, tokens, 3, 8, generator=g),
        torch.randn(2, tokens, 3, 8, generator=g),
        start=1,
        model_fingerprint="fp",
    )


def test_round_trip_is_bit_identical(tmp_path):
    entry = random_entry()
    write_entry(entry, tmp_path / "e.safetensors", SECRET)
    back = read_entry(tmp_path / "e.safetensors", entry.key, "fp", SECRET)
    for name in ("token_ids", "k", "v"):
        assert torch.equal(getattr(back, name), getattr(entry, name))
    assert (back.start, back.context_id) == (entry.start, entry.context_id)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_bf16_round_trip_is_bit_identical(tmp_path):
    entry = random_entry()
    entry.k, entry.v = entry.k.bfloat16(), entry.v.bfloat16()
    write_entry(entry, tmp_path / "e.safetensors", SECRET)
    back = read_entry(tmp_path / "e.safetensors", entry.key, "fp", SECRET)
    assert back.k.dtype == torch.bfloat16 and torch.equal(back.k, entry.k)


def test_lru_tier_evicts_least_recently_used_within_budget():
    a, b, c = random_entry("a" * 64), random_entry("b" * 64), random_entry("c" * 64)
    tier = LRUTier(torch.device("cpu"), budget_bytes=2 * a.nbytes)
    assert tier.put(a) == [] and tier.put(b) == []
    tier.get(a.key)  # a is now the most recent
    evicted = tier.put(c)
    assert [e.key for e in evicted] == [b.key] and tier.used == 2 * a.nbytes
    assert set(tier.entries) == {a.key, c.key}


def test_store_falls_back_to_disk_after_memory_eviction(tmp_path):
    entries = [random_entry(ch * 64) for ch in "abc"]
    store = ChunkStore("fp", torch.device("cpu"), 0, entries[0].nbytes, tmp_path)
    for e in entries:
        store.put(e)
    assert len(store.cpu.entries) == 1
    back = store.get(entries[0].key)
    assert torch.equal(back.k, entries[0].k) and store.counts["disk"] == 1


def corrupt(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "bitflip":
        data[-5] ^= 0x10  # inside the V tensor's payload
        path.write_bytes(bytes(data))
    elif how == "foreign_model":
        with safe_open(str(path), framework="pt") as f:
            meta, tensors = dict(f.metadata()), {n: f.get_tensor(n) for n in f.keys()}
        meta["model_fingerprint"] = "another-model"
        save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("how", ["truncate", "bitflip", "foreign_model"])
def test_entry_level_corruption_is_detected(tmp_path, how):
    entry = random_entry()
    write_entry(entry, tmp_path / "e.safetensors", SECRET)
    corrupt(tmp_path / "e.safetensors", how)
    with pytest.raises(CorruptEntryError):
        read_entry(tmp_path / "e.safetensors", entry.key, "fp", SECRET)


@pytest.mark.parametrize("kv_format", ["native", "fp8", "int4"])
@pytest.mark.parametrize("how", ["truncate", "bitflip", "foreign_model"])
def test_corrupt_entries_are_recomputed_and_output_unchanged(smol_engine, tmp_path, how, kv_format):
    clean = engine_on(smol_engine.loaded, tmp_path / "clean", kv_format=kv_format)
    clean.precompute(DOCS)
    expected = clean.generate(rag_messages(DOCS), max_new_tokens=12, selector="fusionrag")

    writer = engine_on(smol_engine.loaded, tmp_path / "c", kv_format=kv_format)
    keys = writer.precompute(DOCS)
    for key in keys:
        corrupt(writer.chunks.store.path(key), how)
    reader = engine_on(smol_engine.loaded, tmp_path / "c", kv_format=kv_format)  # fresh memory tiers: reads the disk
    out = reader.generate(rag_messages(DOCS), max_new_tokens=12, selector="fusionrag")
    assert reader.chunks.store.counts["corrupt"] == len(DOCS)
    assert out.stats.chunks_found == len(DOCS) and out.stats.chunks_computed == len(DOCS)
    assert out.token_ids == expected.token_ids
    for key in keys:  # the recomputed entries are valid on disk again
        read_entry(reader.chunks.store.path(key), key, smol_engine.loaded.model_fingerprint, reader.chunks.store.secret)


CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path
    from tests.conftest import DOCS, rag_messages
    engine = FusionEngine.from_pretrained(default_model_path(), device="cpu",
        config=EngineConfig(cache_dir={cache!r}, model_cache_dir={models!r}))
    engine = FusionEngine(engine.loaded, EngineConfig(cache_dir={cache!r}))
    mode = sys.argv[1]
    if mode == "write":
        texts = [d + sys.argv[2] for d in DOCS] + DOCS
        engine.precompute(texts)
        print(json.dumps({{"computed": engine.counters["chunks_computed"]}}))
    else:
        out = engine.generate(rag_messages(DOCS), max_new_tokens=4)
        s = out.stats
        print(json.dumps({{"found": s.chunks_found, "reused": s.chunks_reused, "computed": s.chunks_computed,
                           "precomputed": engine.counters["chunks_computed"]}}))
    """
)


def run_child(tmp_path, *args: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), models=str(MODELS), cache=str(tmp_path / "shared")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_processes_writing_one_directory_lose_nothing(smol_engine, tmp_path):
    a, b = run_child(tmp_path, "write", " (A)"), run_child(tmp_path, "write", " (B)")
    result(a), result(b)
    engine = engine_on(smol_engine.loaded, tmp_path / "shared")
    texts = [d + " (A)" for d in DOCS] + [d + " (B)" for d in DOCS] + DOCS
    assert len(engine.chunks) == len(texts)  # both processes' catalog rows are there
    keys = engine.precompute(texts)
    assert engine.counters["chunks_computed"] == 0
    for key in keys:  # and every file verifies
        read_entry(engine.chunks.store.path(key), key, smol_engine.loaded.model_fingerprint, engine.chunks.store.secret)


def test_second_process_reuses_the_persistent_cache(smol_engine, tmp_path):
    engine_on(smol_engine.loaded, tmp_path / "shared").precompute(DOCS)
    stats = result(run_child(tmp_path, "read"))
    assert stats == {"found": len(DOCS), "reused": len(DOCS), "computed": 0, "precomputed": 0}


def test_hot_tier_is_backed_by_the_cpu_tier_and_keeps_what_does_not_fit(tmp_path):
    """The GPU tier's logic, run with a hot tier on the CPU device."""
    entries = [random_entry(ch * 64) for ch in "abc"]
    size = entries[0].nbytes
    store = ChunkStore(
        "fp", torch.device("cpu"), gpu_bytes=2 * size, cpu_bytes=10 * size, directory=None, hot_tier=True
    )
    for e in entries:
        store.put(e)
    assert set(store.gpu.entries) == {"b" * 64, "c" * 64} and set(store.cpu.entries) == {"a" * 64, "b" * 64, "c" * 64}
    assert torch.equal(store.get("a" * 64).k, entries[0].k)  # promoted back from its CPU copy: b is dropped
    assert set(store.gpu.entries) == {"c" * 64, "a" * 64} and set(store.cpu.entries) == {"a" * 64, "b" * 64, "c" * 64}
    tiny = ChunkStore(
        "fp", torch.device("cpu"), gpu_bytes=size // 2, cpu_bytes=10 * size, directory=None, hot_tier=True
    )
    tiny.put(entries[0])
    for _ in range(3):  # too large for the hot tier: served from the CPU tier every time, never lost
        assert torch.equal(tiny.get("a" * 64).k, entries[0].k)
    assert tiny.counts["cpu"] == 3 and tiny.counts["miss"] == 0


def test_entries_the_hot_tier_evicts_are_demoted_not_dropped():
    """Entries computed on the device go to the hot tier alone (`keep` does this for CUDA entries; the
    hot tier's logic runs here on the CPU device); when it evicts one, the CPU tier takes it (a chunk
    is never recomputed, nor read back from disk, while a memory tier has room for it)."""
    entries = [random_entry(ch * 64) for ch in "abcd"]
    size = entries[0].nbytes
    store = ChunkStore("fp", torch.device("cpu"), gpu_bytes=2 * size, cpu_bytes=3 * size, directory=None,
                       hot_tier=True)  # fmt: skip
    for e in entries:
        store._into_gpu(e)
    assert set(store.gpu.entries) == {"c" * 64, "d" * 64}
    assert set(store.cpu.entries) == {"a" * 64, "b" * 64} and store.counts["demoted"] == 2
    for e in entries:  # every one served from memory
        assert torch.equal(store.get(e.key).k, e.k)
    assert store.counts["miss"] == 0 and store.counts["cpu"] + store.counts["gpu"] == 4


def test_catalogs_opened_at_once_on_a_new_directory_all_open(tmp_path):
    """Workers opening one new catalog at the same moment: SQLite refuses the WAL switch to all but
    one without waiting on its busy timeout (it broke a two-process test now and then); none may fail."""
    import threading

    from fusionrag_integrations.store.catalog import SqliteCatalog

    def open_catalog(path, barrier: threading.Barrier, errors: list) -> None:
        barrier.wait()
        try:
            SqliteCatalog(path, "fp").add([])
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    for trial in range(40):
        args = (tmp_path / f"{trial}" / "catalog.sqlite", threading.Barrier(6), [])
        workers = [threading.Thread(target=open_catalog, args=args) for _ in range(6)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not args[2], f"trial {trial}: {args[2][0]!r}"
