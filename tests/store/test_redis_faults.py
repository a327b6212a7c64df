"""Redis faults at the engine level, against a real redis-server on loopback: stopped mid-run (answers
go on, the chunks are recomputed and counted), restarted (reuse resumes on the same engines), killed
with SIGKILL while a bulk ingest writes its batches (what Redis holds afterwards is complete and
verified; no entry is half there)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from fusionrag_integrations.store.redis_backend import RETRY_AFTER_S
from tests.conftest import DOCS, REPO, engine_on, rag_messages
from tests.redis_server import needs_redis, running

pytestmark = needs_redis


@pytest.fixture
def durable(tmp_path):
    """A redis-server that writes every command to its append-only file before answering: a restart
    brings back what was stored, and a kill can cut a write in the middle."""
    (tmp_path / "redis").mkdir()
    yield from running(tmp_path / "redis", appendonly=True)


def test_redis_stopped_mid_run_then_restarted(durable, smol_engine, tmp_path, caplog):
    loaded, first, later = smol_engine.loaded, DOCS[:2], DOCS[2:]
    a = engine_on(loaded, tmp_path / "a", kv_backend=durable.url)
    a.precompute(first)
    expected = a.generate(rag_messages(first), max_new_tokens=8)
    b = engine_on(loaded, tmp_path / "b", kv_backend=durable.url)  # knows the 2 chunks from the shared catalog

    durable.stop()
    with caplog.at_level(logging.WARNING):
        during = b.generate(rag_messages(first), max_new_tokens=8)
    assert during.token_ids == expected.token_ids  # answered, with the same tokens
    assert during.stats.chunks_found == 2 and during.stats.chunks_computed == 2  # recomputed, not failed
    assert b.chunks.store.counts["remote_unavailable"] > 0
    assert any("Redis chunk-KV tier unavailable" in r.getMessage() for r in caplog.records)
    still = a.generate(rag_messages(first), max_new_tokens=8)  # a's memory tiers serve it meanwhile
    assert still.stats.chunks_reused == 2 and still.token_ids == expected.token_ids

    durable.start()  # same append-only file: the entries and catalog rows are back
    time.sleep(RETRY_AFTER_S)  # the engines try Redis again a second after their last failure
    a.precompute(later)  # a's client reconnected: new entries reach Redis
    before = b.chunks.store.counts["redis"]
    after = b.generate(rag_messages(later), max_new_tokens=8)  # b reconnected too: detects, reads Redis
    assert after.stats.chunks_found == 2 and after.stats.chunks_reused == 2 and after.stats.chunks_computed == 0
    assert b.chunks.store.counts["redis"] == before + 2
    fresh = engine_on(loaded, tmp_path / "c", kv_backend=durable.url)
    again = fresh.generate(rag_messages(first), max_new_tokens=8)
    assert again.stats.chunks_reused == 2 and again.stats.chunks_computed == 0
    assert again.token_ids == expected.token_ids


INGEST = """
import sys
sys.path.insert(0, {repo!r})
from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path
engine = FusionEngine.from_pretrained(default_model_path(), device="cpu",
    config=EngineConfig(cache_dir={cache!r}, kv_backend={url!r}))
texts = [{passage!r}.format(i=i) for i in range({n})]
for start in range(0, len(texts), 4):  # one bulk add after another, as a loader would send them
    engine.precompute(texts[start : start + 4])
print("ingested", len(engine.chunks), "failed writes", engine.chunks.store.counts["remote_unavailable"])
"""
PASSAGE = "Record {i} of the harbour ledger: the ship number {i} unloaded {i} crates of salt and rope at dawn."


def test_redis_killed_during_a_bulk_ingest_leaves_only_whole_entries(durable, smol_engine, tmp_path):
    n = 64
    script = INGEST.format(repo=str(REPO), cache=str(tmp_path / "a"), url=durable.url, passage=PASSAGE, n=n)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    client, deadline = durable.client(), time.monotonic() + 300
    while client.dbsize() < 6 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.01)
    durable.kill()  # SIGKILL while batches are being written
    out, _ = child.communicate(timeout=600)
    assert child.returncode == 0 and out.split()[1] == str(n)  # the ingest itself finished
    assert int(out.split()[-1]) > 0  # and counted the writes Redis missed

    durable.start()  # replays the append-only file, dropping a command cut in the middle
    reader = engine_on(smol_engine.loaded, tmp_path / "b", kv_backend=durable.url)
    backend = reader.chunks.store.backend
    stored = [name.decode()[len(backend.prefix) :] for name in durable.client().keys(backend.prefix + "*")]
    assert 0 < len(stored) < n
    assert all(e is not None for e in backend.get_many(stored))  # every value there verifies
    assert reader.chunks.store.counts["corrupt"] == 0
    catalogued = set(reader.chunks.names.by_key)
    assert catalogued <= set(stored)  # a catalog row never points at an entry that is not whole
    texts = [PASSAGE.format(i=i) for i in range(n)]
    out = reader.generate("\n\n".join(texts[:12]) + "\n\nWhich ship unloaded 7 crates?", max_new_tokens=4)
    known = sum(1 for t in texts[:12] if reader.chunks.refs_for(t.strip()))  # detected: in the shared catalog
    assert known > 0 and out.stats.chunks_found == out.stats.chunks_reused == known  # each one read whole
    assert out.stats.chunks_computed == 0


@pytest.mark.parametrize("damage", ["bitflip", "foreign_model"])
def test_a_bad_entry_in_redis_is_recomputed_by_the_engine(durable, smol_engine, tmp_path, damage):
    from dataclasses import replace

    a = engine_on(smol_engine.loaded, tmp_path / "a", kv_backend=durable.url)
    keys = a.precompute(DOCS[:2])
    expected = a.generate(rag_messages(DOCS[:2]), max_new_tokens=8)
    backend = a.chunks.store.backend
    name = backend.prefix + keys[0]
    if damage == "bitflip":
        value = bytearray(durable.client().get(name))
        value[len(value) // 2] ^= 0x10
        durable.client().set(name, bytes(value))
    else:  # another model's KV under this key, correctly sealed with the shared secret
        backend.put(replace(backend.get(keys[0]), model_fingerprint="another-model"))
    b = engine_on(smol_engine.loaded, tmp_path / "b", kv_backend=durable.url)
    out = b.generate(rag_messages(DOCS[:2]), max_new_tokens=8)
    assert out.stats.chunks_found == 2 and out.stats.chunks_computed == 1 and out.stats.chunks_reused == 1
    assert b.chunks.store.counts["corrupt"] == 1 and out.token_ids == expected.token_ids
    assert b.chunks.store.backend.get(keys[0]) is not None  # the recomputed entry replaced it


def test_a_slow_redis_is_waited_for_at_most_its_socket_timeout(durable, smol_engine, tmp_path):
    """Redis that stops answering (CLIENT PAUSE: every client waits 3 s) costs a request about one socket
    timeout per call site (catalog, read-ahead), not one per chunk and not the pause: the chunks are
    recomputed, and for a second after a failure nothing waits on Redis."""
    a = engine_on(smol_engine.loaded, tmp_path / "a", kv_backend=durable.url)
    a.precompute(DOCS)
    expected = a.generate(rag_messages(DOCS), max_new_tokens=4)
    b = engine_on(smol_engine.loaded, tmp_path / "b", kv_backend=durable.url + "?socket_timeout=0.3")
    durable.client().execute_command("CLIENT", "PAUSE", "20000", "ALL")  # the fixture's stop ends it
    t0 = time.monotonic()
    out = b.generate(rag_messages(DOCS), max_new_tokens=4)
    # asserted: the request did not wait out the 20 s pause. The margin is wide (it takes ~1 s on an idle
    # machine) so that a loaded machine cannot break it
    assert time.monotonic() - t0 < 15 and out.stats.chunks_computed == len(DOCS)
    assert out.token_ids == expected.token_ids
    assert b.chunks.store.counts["remote_unavailable"] > 0


@pytest.fixture
def volatile(tmp_path):
    """A redis-server without persistence: a restart comes back empty."""
    (tmp_path / "volatile").mkdir()
    yield from running(tmp_path / "volatile")


def test_redis_restarted_empty_gets_back_what_memory_still_holds(volatile, smol_engine, tmp_path):
    """Redis restarted without persistence loses entries and catalog; ingesting the same texts again
    writes back what the engine's memory tiers still hold (it used to answer "cached" and write nothing),
    so a fresh engine finds every chunk again."""
    a = engine_on(smol_engine.loaded, tmp_path / "a", kv_backend=volatile.url)
    keys = a.precompute(DOCS)
    volatile.stop()
    volatile.start()  # empty
    time.sleep(RETRY_AFTER_S)
    assert volatile.client().dbsize() == 0
    again = a.precompute(DOCS)
    assert again == keys and a.chunks.counts["written_back"] >= len(DOCS)
    backend = a.chunks.store.backend
    assert all(backend.contains(k) for k in keys)
    fresh = engine_on(smol_engine.loaded, tmp_path / "b", kv_backend=volatile.url)
    out = fresh.generate(rag_messages(DOCS), max_new_tokens=4)
    assert out.stats.chunks_found == len(DOCS) and out.stats.chunks_reused == len(DOCS)


def test_deleting_while_redis_is_down_counts_what_was_removed_here(volatile, smol_engine, tmp_path):
    a = engine_on(smol_engine.loaded, tmp_path / "a", kv_backend=volatile.url)
    keys = a.precompute(DOCS[:2])
    volatile.stop()
    assert a.forget(keys) == 2  # removed from this engine's tiers and index, though Redis did not answer
    assert a.keys_for(DOCS[:2]) == []


def test_a_chunk_slower_to_read_than_to_compute_is_computed_and_answers_alike(durable, smol_engine, tmp_path):
    """The fetch-or-recompute choice: with the backend measured slower than the model (here: told so), a
    standalone chunk only Redis holds is computed instead of read, kept in memory, and not written again."""
    a = engine_on(smol_engine.loaded, tmp_path / "a", kv_backend=durable.url)
    a.precompute(DOCS)
    expected = a.generate(rag_messages(DOCS), max_new_tokens=6)
    b = engine_on(smol_engine.loaded, tmp_path / "b", kv_backend=durable.url)
    cost = b.chunks.store.cost
    cost.read_bytes_per_s, cost.bytes_per_token, cost.compute_tokens_per_s = 1e3, 1e5, 1e6  # reading: far slower
    writes_before = durable.client().info("commandstats").get("cmdstat_set", {}).get("calls", 0)
    out = b.generate(rag_messages(DOCS), max_new_tokens=6)
    assert out.token_ids == expected.token_ids and b.chunks.counts["computed_not_fetched"] == len(DOCS)
    assert b.chunks.store.counts["redis"] == 0  # nothing read back
    b.chunks.flush()
    assert durable.client().info("commandstats").get("cmdstat_set", {}).get("calls", 0) == writes_before
    again = b.generate(rag_messages(DOCS), max_new_tokens=6)  # now in memory: reused
    assert again.stats.chunks_reused == len(DOCS) and again.token_ids == expected.token_ids
