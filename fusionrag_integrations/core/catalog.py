"""Which chunk texts have cached KV, per model: a small SQLite table next to the KV files.

Drop-in detection needs the texts (the prompt only holds text), and a new process on the
same cache directory must find them without recomputing anything. SQLite gives that with
safe concurrent access from several processes for free.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChunkRef:
    key: str
    text: str  # the chunk text as stored (stripped of surrounding whitespace)
    context_id: str
    num_tokens: int


def _use_wal(db: sqlite3.Connection, patience_s: float = 30.0) -> None:
    """WAL mode: readers never block the one writer. The switch needs an exclusive lock, and when
    several processes open a new catalog at once SQLite answers "database is locked" at once
    (breaking the deadlock) instead of waiting on the busy timeout: retry until one has switched."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Catalog:
    def __init__(self, path: Path | None, model_fingerprint: str) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.model_fp = model_fingerprint
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path) if path else ":memory:", timeout=30.0, check_same_thread=False)
        with self._lock, self._db:
            if path is not None:
                _use_wal(self._db)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS chunks (model_fp TEXT NOT NULL, key TEXT NOT NULL, text TEXT NOT NULL, "
                "context_id TEXT NOT NULL, num_tokens INTEGER NOT NULL, created REAL NOT NULL, "
                "PRIMARY KEY (model_fp, key))"
            )

    def add(self, refs: list[ChunkRef]) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?)",
                [(self.model_fp, r.key, r.text, r.context_id, r.num_tokens, time.time()) for r in refs],
            )

    def remove(self, keys: list[str]) -> list[ChunkRef]:
        """Delete these keys; return what was removed."""
        with self._lock:
            removed = [
                ChunkRef(*row)
                for key in keys
                for row in self._db.execute(
                    "SELECT key, text, context_id, num_tokens FROM chunks WHERE model_fp = ? AND key = ?",
                    (self.model_fp, key),
                )
            ]
        with self._lock, self._db:
            self._db.executemany(
                "DELETE FROM chunks WHERE model_fp = ? AND key = ?", [(self.model_fp, k) for k in keys]
            )
        return removed

    def refs(self) -> list[ChunkRef]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, text, context_id, num_tokens FROM chunks WHERE model_fp = ? ORDER BY created",
                (self.model_fp,),
            ).fetchall()
        return [ChunkRef(*row) for row in rows]

    def keys_for_text(self, text: str) -> list[ChunkRef]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, text, context_id, num_tokens FROM chunks WHERE model_fp = ? AND text = ?",
                (self.model_fp, text),
            ).fetchall()
        return [ChunkRef(*row) for row in rows]
