"""Which chunk texts have cached KV, per model: a small SQLite table next to the KV files.

Drop-in detection needs the texts (the prompt only holds text), and a new process on the
same cache directory must find them without recomputing anything. SQLite gives that with
safe concurrent access from several processes for free.

The catalog is an index, not the truth: every entry file's header carries its key, text and
context, so a lost, truncated or garbled catalog is set aside and rebuilt from the entries
(registry.adopt_orphans), and a read-only cache directory is opened read-only. Damage is looked
for when the file is opened (SQLite's quick_check reads every page) and caught on every later
call: a call that finds the file damaged sets it aside, opens a new one and bumps `generation`,
so the registry re-catalogues the entries; the call itself answers as an empty catalog would.
A write that fails (read-only, disk full) is logged and counted: the in-memory index still has
the rows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..integrity import is_valid_key
from .sqlite_file import file_inode, is_damage, open_read_only, open_writable

log = logging.getLogger(__name__)
T = TypeVar("T")
_COLUMNS = "key, text, context_id, num_tokens"


@dataclass(frozen=True)
class ChunkRef:
    key: str
    text: str  # the chunk text as stored (stripped of surrounding whitespace)
    context_id: str
    num_tokens: int


class SqliteCatalog:
    def __init__(self, path: Path | None, model_fingerprint: str) -> None:
        self.model_fp, self.path = model_fingerprint, path
        self.read_only = False
        self.write_failures = 0
        self.generation = 0  # bumped when a damaged file was replaced: its rows must be rebuilt
        self._lock = threading.Lock()
        self._db = self._open(path)
        self._inode = file_inode(path)
        self._data_version = self._version()

    def _guarded(self, what: str, call: Callable[[sqlite3.Connection], T], default: T) -> T:
        """call(db) under the lock. Damage found here: the file is set aside and a new one opened
        (unless another process did that already), and the call answers `default`."""
        with self._lock:
            db = self._db
            try:
                return call(db)
            except sqlite3.DatabaseError as err:
                if not is_damage(err) or self.path is None:
                    raise
                self._replace_damaged(db, err, what)
                return default

    def _replace_damaged(self, db: sqlite3.Connection, err: sqlite3.Error, what: str) -> None:
        if db is not self._db:  # another thread replaced it already
            return
        db.close()
        self.generation += 1
        path = self.path
        if self.read_only:
            log.warning("chunk catalog %s is damaged (%s, on %s) and read-only: indexing in memory", path, err, what)
            self._db = open_writable(Path(":memory:"))
        else:
            log.warning("chunk catalog %s is damaged (%s, found on %s)", path, err, what)
            self._db = self._reopen_after_damage(err, self._inode)
            self._inode = file_inode(path)

    def _open(self, path: Path | None) -> sqlite3.Connection:
        if path is None:
            return open_writable(Path(":memory:"))
        existed = path.is_file() and path.stat().st_size > 0
        if existed and not os.access(path.parent, os.W_OK):  # read-only mount or permissions: never write
            return self._open_read_only(path, PermissionError("the cache directory is not writable"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open_writable(path)
        except sqlite3.DatabaseError as err:
            if "readonly" in str(err) or "unable to open" in str(err):
                return self._open_read_only(path, err)
            return self._set_aside(path, err)
        except OSError as err:  # the directory cannot be created (read-only parent)
            return self._open_read_only(path, err)

    def _open_read_only(self, path: Path, err: Exception) -> sqlite3.Connection:
        self.read_only = True
        try:
            return open_read_only(path)
        except sqlite3.Error:
            log.warning("chunk catalog %s is not writable (%s) nor readable: indexing in memory", path, err)
            return open_writable(Path(":memory:"))

    def _set_aside(self, path: Path, err: Exception) -> sqlite3.Connection:
        """A garbled catalog file: move it (and its WAL files) aside and start a new one."""
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        log.warning("chunk catalog %s is unreadable (%s): moved aside, rebuilding from the entries", path, err)
        for suffix in ("", "-wal", "-shm"):
            old = path.with_name(path.name + suffix)
            if old.exists():
                old.replace(path.with_name(f"{path.name}.corrupt-{stamp}{suffix}"))
        return open_writable(path)

    def _reopen_after_damage(self, err: Exception, damaged_inode: int | None) -> sqlite3.Connection:
        """Another process may have set the damaged file aside already: then the file now at the path is
        its new catalog, opened as it is; else this one sets it aside."""
        path = self.path
        assert path is not None  # an in-memory catalog is never damaged on disk
        if file_inode(path) not in (None, damaged_inode):
            try:
                return open_writable(path)
            except sqlite3.DatabaseError as again:
                if not is_damage(again):
                    raise
                err = again
        return self._set_aside(path, err)

    def _version(self) -> int:
        return self._guarded("read", lambda db: db.execute("PRAGMA data_version").fetchone()[0], -1)

    def changed(self) -> bool:
        """Whether another connection (another process) committed since the last call: one cheap pragma
        (and one stat: when another process replaced a damaged file, this one opens the new file too)."""
        if self.path is not None and not self.read_only and file_inode(self.path) != self._inode:
            with self._lock:
                self._db.close()
                self.generation += 1
                self._db = self._open(self.path)
                self._inode = file_inode(self.path)
        version = self._version()
        changed, self._data_version = version != self._data_version, version
        return changed

    def _write(self, sql: str, rows: list[tuple]) -> bool:
        if self.read_only or not rows:
            return not rows

        def write(db: sqlite3.Connection) -> bool:
            with db:
                db.executemany(sql, rows)
            return True

        try:
            return bool(self._guarded("write", write, False))
        except sqlite3.Error as err:  # read-only, disk full, locked past the timeout: keep serving
            self.write_failures += 1
            log.warning("chunk catalog write failed (%s); kept in this process's index only", err)
            return False

    def add(self, refs: list[ChunkRef]) -> bool:
        rows = [(self.model_fp, r.key, r.text, r.context_id, r.num_tokens, time.time()) for r in refs]
        return self._write("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?)", rows)

    def remove(self, keys: list[str]) -> list[ChunkRef]:
        """Delete these keys; return what was removed."""
        removed = [ref for key in keys for ref in self._select("key = ?", (key,))]
        self._write("DELETE FROM chunks WHERE model_fp = ? AND key = ?", [(self.model_fp, k) for k in keys])
        self._write("DELETE FROM usage WHERE model_fp = ? AND key = ?", [(self.model_fp, k) for k in keys])
        return removed

    # -- the disk budget: least recently used entries go first --------------------------------------

    def record(self, sizes: list[tuple[str, int]], replace: bool = True) -> None:
        """Bytes on disk of newly written entries (used now); replace=False keeps known rows (adoption)."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        now = time.time()
        self._write(f"{verb} INTO usage VALUES (?, ?, ?, ?)", [(self.model_fp, k, n, now) for k, n in sizes])

    def touch(self, keys: list[str]) -> None:
        now = time.time()
        self._write("UPDATE usage SET used = ? WHERE model_fp = ? AND key = ?", [(now, self.model_fp, k) for k in keys])

    def disk_bytes(self) -> int:
        sql = "SELECT sum(bytes) FROM usage WHERE model_fp = ?"
        row = self._guarded("read", lambda db: db.execute(sql, (self.model_fp,)).fetchone(), (0,))
        return int(row[0] or 0)

    def least_recent(self) -> list[tuple[str, int, float]]:
        """(key, bytes, last use) of every entry on disk, least recently used first."""
        sql = "SELECT key, bytes, used FROM usage WHERE model_fp = ? ORDER BY used, rowid"
        rows: list[tuple] = self._guarded("read", lambda db: db.execute(sql, (self.model_fp,)).fetchall(), [])
        return [(k, int(n), float(t)) for k, n, t in rows if is_valid_key(k)]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def drop(self, ref: ChunkRef) -> None:
        """Delete one row that turned out wrong (its entry names another text)."""
        self._write(
            "DELETE FROM chunks WHERE model_fp = ? AND key = ? AND text = ?", [(self.model_fp, ref.key, ref.text)]
        )

    def refs_since(self, rowid: int = 0) -> tuple[list[ChunkRef], int]:
        """Rows added after `rowid` (oldest first) and the newest rowid: how another process's new
        chunks reach this one. Rows with a key that is not a key are skipped (never used as a path)."""
        sql = f"SELECT rowid, {_COLUMNS} FROM chunks WHERE model_fp = ? AND rowid > ? ORDER BY rowid"
        generation = self.generation
        rows: list[tuple] = self._guarded("read", lambda db: db.execute(sql, (self.model_fp, rowid)).fetchall(), [])
        if self.generation != generation:
            return [], 0  # a new file: its rows start again from the beginning
        last = max((r[0] for r in rows), default=rowid)
        return [ref for _, *row in rows if (ref := _ref(row)) is not None], last

    def _select(self, where: str, args: tuple) -> list[ChunkRef]:
        sql = f"SELECT {_COLUMNS} FROM chunks WHERE model_fp = ? AND {where}"
        rows: list[tuple] = self._guarded("read", lambda db: db.execute(sql, (self.model_fp, *args)).fetchall(), [])
        return [ref for row in rows if (ref := _ref(row)) is not None]


def _ref(row: Sequence[object]) -> ChunkRef | None:
    key, text, context_id, num_tokens = row
    if not (is_valid_key(key) and isinstance(text, str) and isinstance(context_id, str)):
        log.warning("ignoring a chunk catalog row with a malformed key or text: %.80r", key)
        return None
    return ChunkRef(key, text, context_id, int(num_tokens) if isinstance(num_tokens, int) else 0)
