"""The Redis backend against a real redis-server on loopback: entries round-trip verified; damaged,
foreign and truncated values are misses (and deleted); Redis stopped is a miss, not an error, and
the backend works again once Redis is back."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import pytest
import torch

from fusionrag_integrations.store.chunk_kv import ChunkKV
from fusionrag_integrations.store.redis_backend import RETRY_AFTER_S, RedisBackend
from tests.redis_server import needs_redis, running

pytestmark = needs_redis
SECRET = b"s" * 32


@pytest.fixture
def server(tmp_path):
    yield from running(tmp_path)


def entry(seed: int, kv_format: str = "native") -> ChunkKV:
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(2, 9, 2, 16, generator=g), torch.randn(2, 9, 2, 16, generator=g)
    e = ChunkKV(f"{seed:064x}", torch.arange(9), k, v, 1, "fp", text=f"chunk {seed}")
    return e.compacted(kv_format)


@pytest.mark.parametrize("kv_format", ["native", "int4"])
def test_entries_round_trip_in_one_batched_get(server, kv_format):
    counts: Counter[str] = Counter()
    backend = RedisBackend(server.url, "ns", "fp", SECRET, counts)
    written = [entry(i, kv_format) for i in range(5)]
    assert all(backend.put(e) for e in written)
    got = backend.get_many([e.key for e in written] + [f"{99:064x}", "../not-a-key"])
    assert got[-2:] == [None, None]
    for a, b in zip(written, got):
        assert b.kv_format == kv_format and b.text == a.text and torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    assert backend.contains(written[0].key) and not backend.contains(f"{99:064x}")


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "foreign_model", "other_secret"])
def test_a_bad_value_is_a_miss_and_is_deleted(server, damage):
    counts: Counter[str] = Counter()
    backend = RedisBackend(server.url, "ns", "fp", SECRET, counts)
    e = entry(1)
    name = backend.prefix + e.key
    if damage == "foreign_model":
        backend.put(replace(e, model_fingerprint="other-model"))  # another model's KV under this key
    elif damage == "other_secret":
        RedisBackend(server.url, "ns", "fp", b"x" * 32, Counter()).put(e)
    else:
        backend.put(e)
        value = bytearray(backend.redis.get(name))
        if damage == "bitflip":
            value[-5] ^= 0x01
        else:
            value = value[: len(value) // 2]
        backend.redis.set(name, bytes(value))
    assert backend.get(e.key) is None and counts["corrupt"] == 1
    assert not backend.redis.exists(name)


def test_redis_stopped_is_a_miss_and_it_reconnects(server):
    counts: Counter[str] = Counter()
    backend = RedisBackend(server.url, "ns", "fp", SECRET, counts, timeout_s=0.5)
    e = entry(3)
    assert backend.put(e)
    server.stop()
    assert backend.get(e.key) is None and not backend.put(entry(4)) and not backend.contains(e.key)
    assert counts["remote_unavailable"] >= 3
    server.start()  # empty again (no persistence): writes and reads work without a new backend
    time.sleep(RETRY_AFTER_S)  # within a second of a failure calls do not try (a slow Redis costs one timeout)
    assert backend.put(e) and backend.get(e.key).text == e.text


def test_an_engine_persists_in_redis_and_a_new_one_reads_it_there(server, smol_engine, tmp_path):
    from tests.conftest import DOCS, engine_on, rag_messages

    writer = engine_on(smol_engine.loaded, tmp_path / "a", kv_backend=server.url)
    keys = writer.precompute(DOCS)
    assert not list((tmp_path / "a").glob("kv/*/??/*.safetensors"))  # nothing on the local disk
    assert all(writer.chunks.store.backend.contains(k) for k in keys)
    expected = writer.generate(rag_messages(DOCS), max_new_tokens=8)
    reader = engine_on(smol_engine.loaded, tmp_path / "a", kv_backend=server.url)  # empty memory tiers
    out = reader.generate(rag_messages(DOCS), max_new_tokens=8)
    assert out.stats.chunks_reused == len(DOCS) and out.stats.chunks_computed == 0
    assert reader.chunks.store.counts["redis"] == len(DOCS) and out.token_ids == expected.token_ids
    assert out.stats.chunks_hot == 0  # read from Redis; the next request finds them in memory
    assert reader.generate(rag_messages(DOCS), max_new_tokens=2).stats.chunks_hot == len(DOCS)


PASSAGE = "Passage {i} of the shared tier: the keeper of lighthouse {i} logged {n} ships in fog."
QUESTION = "\n\nWhich lighthouse logged 27 ships?"
CHILD = """
import sys
sys.path.insert(0, {repo!r})
from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path
engine = FusionEngine.from_pretrained(default_model_path(), device="cpu",
    config=EngineConfig(cache_dir={cache!r}, kv_backend={url!r}))
texts = [{passage!r}.format(i=i, n=i * 3) for i in range(20)]
engine.precompute(texts)
print(engine.generate("\\n\\n".join(texts) + {question!r}, max_new_tokens=8).token_ids)
"""


def test_two_processes_share_one_redis(server, smol_engine, tmp_path):
    """Engine A (another process) ingests 20 passages; engine B, on its own cache directory, detects them
    inside a prompt without being told and reuses every one, with A's greedy answer."""
    import subprocess
    import sys

    from tests.conftest import REPO, engine_on

    script = CHILD.format(repo=str(REPO), cache=str(tmp_path / "a"), url=server.url, passage=PASSAGE, question=QUESTION)
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    texts = [PASSAGE.format(i=i, n=i * 3) for i in range(20)]
    b = engine_on(smol_engine.loaded, tmp_path / "b", kv_backend=server.url)
    out = b.generate("\n\n".join(texts) + QUESTION, max_new_tokens=8)
    assert out.stats.chunks_found == 20 and out.stats.chunks_reused == 20 and out.stats.chunks_computed == 0
    assert str(out.token_ids) == answer.stdout.strip().splitlines()[-1]  # A's greedy answer


def test_after_a_failure_calls_do_not_wait_on_redis_for_a_second(server):
    """A slow Redis costs one socket timeout, then misses come at once until RETRY_AFTER_S has passed."""
    backend = RedisBackend(server.url + "?socket_timeout=0.2", "ns", "fp", SECRET, Counter())
    e = entry(5)
    assert backend.put(e)
    server.client().execute_command("CLIENT", "PAUSE", "1500", "ALL")  # every client waits 1.5 s
    t0 = time.monotonic()
    assert backend.get(e.key) is None
    first = time.monotonic() - t0
    t0 = time.monotonic()
    assert [backend.get(e.key) for _ in range(20)] == [None] * 20 and not backend.put(entry(6))
    rest = time.monotonic() - t0
    assert 0.15 <= first < 1.0 and rest < 0.1, (first, rest)
    time.sleep(1.6)  # the pause is over and so is the back-off
    assert backend.get(e.key).text == e.text
