"""A damaged, missing or read-only catalog, failed writes and other processes' new chunks: every request
answers, nothing wrong is used, and reuse resumes (the catalog is rebuilt from the entries' headers)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import DOCS, MODELS, REPO, engine_on, rag_messages

NEW_PASSAGE = "A new passage about the tides of Kellersby, which rise twice a day along the granite quay."


def answer(engine, **kwargs):
    return engine.generate(rag_messages(DOCS), max_new_tokens=8, selector="fusionrag", **kwargs)


@pytest.fixture
def warm(smol_engine, tmp_path):
    """A cache directory holding DOCS' entries, and the answer they give."""
    engine = engine_on(smol_engine.loaded, tmp_path / "cache")
    engine.precompute(DOCS)
    return engine.chunks.store.directory, answer(engine).token_ids


def damage_catalog(path, how: str) -> None:
    if how == "deleted":
        for f in path.parent.glob("catalog.sqlite*"):
            f.unlink()
    elif how == "emptied":
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM chunks")
    elif how in ("truncated", "garbage"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3] if how == "truncated" else os.urandom(4096))
        for f in path.parent.glob("catalog.sqlite-*"):  # the WAL would still hold every row
            f.unlink()
    elif how in ("page zeroed", "page garbled", "pages garbled"):  # the header page stays sound
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.seek(4104 if how == "page zeroed" else 4096)
            damage = {"page zeroed": bytes(8192 - 4104), "page garbled": os.urandom(4096)}
            f.write(damage.get(how) or os.urandom(size - 4096))  # pages garbled: every table page


@pytest.mark.parametrize("how", ["deleted", "emptied", "truncated", "garbage", "page zeroed", "page garbled"])
def test_a_lost_or_damaged_catalog_is_rebuilt_from_the_entries(smol_engine, tmp_path, warm, how):
    directory, expected = warm
    damage_catalog(directory / "catalog.sqlite", how)
    engine = engine_on(smol_engine.loaded, tmp_path / "cache")
    out = answer(engine)
    assert out.stats.chunks_reused == len(DOCS) and out.stats.chunks_computed == 0
    assert out.token_ids == expected
    assert engine.chunks.counts["adopted"] == len(DOCS)
    assert engine_on(smol_engine.loaded, tmp_path / "cache").chunks.counts["adopted"] == 0  # catalogued again


def test_a_catalog_damaged_while_running_is_rebuilt_and_requests_go_on(smol_engine, tmp_path, warm):
    """Damage done under a running engine surfaces at its next catalog read: set aside, rebuilt from the
    entries, and the request still reuses every chunk; a new process then starts on the rebuilt file."""
    directory, expected = warm
    running = engine_on(smol_engine.loaded, tmp_path / "cache")
    damage_catalog(directory / "catalog.sqlite", "pages garbled")
    with sqlite3.connect(directory / "catalog.sqlite") as other:  # another process commits: caches go stale
        other.execute("PRAGMA user_version = 7")
    running.precompute([NEW_PASSAGE])  # its next look at the catalog reads the damaged page
    out = answer(running)
    assert out.token_ids == expected and out.stats.chunks_reused == len(DOCS)
    assert running.chunks.counts["catalog_rebuilt"] == 1 and running.chunks.catalog.generation == 1
    assert list(directory.glob("catalog.sqlite.corrupt-*"))  # kept aside for a post-mortem
    later = engine_on(smol_engine.loaded, tmp_path / "cache")
    assert later.chunks.counts["adopted"] == 0 and len(later.chunks) == len(DOCS) + 1  # catalogued again
    assert answer(later).token_ids == expected


def test_a_catalog_another_process_replaced_is_followed(smol_engine, tmp_path, warm):
    """Two engines on one directory: when one sets the damaged file aside and starts a new one, the other
    opens the new file too (it would otherwise keep reading the old one and never see new chunks)."""
    directory, _ = warm
    a = engine_on(smol_engine.loaded, tmp_path / "cache")
    b = engine_on(smol_engine.loaded, tmp_path / "cache")
    damage_catalog(directory / "catalog.sqlite", "pages garbled")
    b.chunks.sync()  # b finds the damage first and replaces the file
    assert b.chunks.catalog.generation == 1
    b.precompute([NEW_PASSAGE])
    a.chunks.sync()
    assert NEW_PASSAGE in a.chunks.index
    aside = [f for f in directory.glob("catalog.sqlite.corrupt-*") if not f.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1  # set aside once, not by both


def test_junk_in_the_entry_folders_is_pruned_and_other_files_left_alone(smol_engine, tmp_path, warm):
    directory, _ = warm
    junk = directory / "ab" / ("ab" + "0" * 62 + ".safetensors")
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(b"not an entry")
    notes = directory / "ab" / "notes.txt"
    notes.write_text("mine")
    engine = engine_on(smol_engine.loaded, tmp_path / "cache")
    assert engine.chunks.counts["pruned"] == 1 and not junk.exists() and notes.read_text() == "mine"


def test_a_directory_at_an_entry_path_costs_persistence_not_the_answer(smol_engine, tmp_path, warm):
    _, expected = warm
    engine = engine_on(smol_engine.loaded, tmp_path / "fresh")
    for text in DOCS:
        engine.chunks.store.path(engine.layout.job(text, ()).key).mkdir(parents=True)
    engine.precompute(DOCS)  # does not raise: the entries stay in memory
    assert engine.chunks.store.counts["write_failed"] == len(DOCS)
    out = answer(engine)
    assert out.token_ids == expected and out.stats.chunks_reused == len(DOCS)


CHILD = textwrap.dedent(
    """
    import json, os, resource, sys
    sys.path.insert(0, {repo!r})
    from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path
    from tests.conftest import DOCS, rag_messages
    engine = FusionEngine.from_pretrained(default_model_path(), device="cpu",
                                          config=EngineConfig(cache_dir={cache!r}, model_cache_dir={models!r}))
    engine = FusionEngine(engine.loaded, EngineConfig(cache_dir={cache!r}))
    if sys.argv[1] == "quota":
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))  # ulimit -f 256
    report = engine.ingest(DOCS) if sys.argv[1] in ("precompute", "quota") else None
    out = engine.generate(rag_messages(DOCS), max_new_tokens=8, selector="fusionrag")
    print(json.dumps({{"ids": out.token_ids, "reused": out.stats.chunks_reused,
                       "ingest": report and [report.computed, report.cached, report.stored],
                       "catalog_read_only": engine.chunks.catalog.read_only,
                       "computed": out.stats.chunks_computed,
                       "write_failed": engine.chunks.store.counts["write_failed"]}}))
    """
)


def run_child(tmp_path, mode: str, cache, read_only: bool = False) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), models=str(MODELS), cache=str(cache)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    from fusionrag_integrations.integrity import cache_secret

    env["FUSIONRAG_CACHE_SECRET"] = cache_secret().decode()  # the parent's key: same trust domain
    command = [sys.executable, str(script), mode]
    if read_only:
        command = ["unshare", "-m", "sh", "-c", READ_ONLY_MOUNT, str(cache), *command]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_file_size_quota_costs_persistence_not_the_answer(tmp_path, warm):
    _, expected = warm
    got = run_child(tmp_path, "quota", tmp_path / "quota-cache")
    assert got["ids"] == expected and got["reused"] == len(DOCS) and got["write_failed"] == len(DOCS)
    assert got["ingest"] == [len(DOCS), 0, 0]  # computed, none stored: said, not hidden behind "computed"


READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def can_mount_read_only(path) -> bool:
    """A private mount namespace with `path` bind-mounted read-only: EROFS for every write, root's too."""
    try:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY_MOUNT, str(path), "true"], capture_output=True)
    except OSError:
        return False
    return probe.returncode == 0


def test_a_read_only_cache_directory_is_used_read_only(tmp_path, warm):
    """The cache directory on a read-only mount: every chunk is reused and nothing is written."""
    directory, expected = warm
    cache = tmp_path / "cache"
    if not can_mount_read_only(cache):
        pytest.skip("needs unshare and mount (root in a private mount namespace)")
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    got = run_child(tmp_path, "read", cache, read_only=True)
    assert got["ids"] == expected and got["reused"] == len(DOCS) and got["computed"] == 0
    assert got["catalog_read_only"]
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before


def test_chunks_another_process_adds_are_found_without_a_restart(smol_engine, tmp_path):
    engine = engine_on(smol_engine.loaded, tmp_path / "cache")  # opened before the other process writes
    assert engine.precompute(["An unrelated note about the weather in Kellersby during the long winter months."])
    got = run_child(tmp_path, "precompute", tmp_path / "cache")
    assert got["computed"] == 0  # the child's own precompute served its generate
    computed_before = engine.counters["chunks_computed"]
    engine.precompute(DOCS)
    assert engine.counters["chunks_computed"] == computed_before  # nothing recomputed
    out = answer(engine)
    assert out.stats.chunks_reused == len(DOCS) and out.token_ids == got["ids"]
