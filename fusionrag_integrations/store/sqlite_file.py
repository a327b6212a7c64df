"""Opening the chunk catalog's SQLite file safely: WAL mode under concurrent first opens, a full page
check (damage found when the file is opened, not at a later read), a read-only fallback, and which
errors mean the file itself is damaged (as opposed to locked, read-only or out of space).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


class CatalogDamagedError(sqlite3.DatabaseError):
    """The catalog file's pages are not a sound database (found by quick_check or by a read)."""


def is_damage(err: sqlite3.Error) -> bool:
    """Damage to the file (never a lock, a read-only file or a full disk: those keep the file)."""
    if isinstance(err, CatalogDamagedError) or getattr(err, "sqlite_errorcode", None) in _DAMAGED:
        return True
    text = str(err)
    return "malformed" in text or "not a database" in text


def _check_pages(db: sqlite3.Connection) -> None:
    problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise CatalogDamagedError(f"quick_check: {'; '.join(map(str, problems[:3]))}")


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


def open_writable(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    try:
        _use_wal(db)
        with db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS chunks (model_fp TEXT NOT NULL, key TEXT NOT NULL, text TEXT NOT NULL, "
                "context_id TEXT NOT NULL, num_tokens INTEGER NOT NULL, created REAL NOT NULL, "
                "PRIMARY KEY (model_fp, key))"
            )
            db.execute(  # the disk budget's bookkeeping: bytes on disk and last use of each entry
                "CREATE TABLE IF NOT EXISTS usage (model_fp TEXT NOT NULL, key TEXT NOT NULL, bytes INTEGER NOT NULL, "
                "used REAL NOT NULL, PRIMARY KEY (model_fp, key))"
            )
        _check_pages(db)  # every page of the file: damage anywhere fails here, not at a later read
    except BaseException:
        db.close()
        raise
    return db


def open_read_only(path: Path) -> sqlite3.Connection:
    """A catalog in a directory we may not write: mode=ro, or immutable when WAL's shared memory
    file cannot be created either."""
    for flags in ("mode=ro", "immutable=1"):
        db = sqlite3.connect(f"file:{path}?{flags}", uri=True, timeout=30.0, check_same_thread=False)
        try:
            db.execute("SELECT count(*) FROM chunks").fetchone()
            return db
        except sqlite3.Error:
            db.close()
    raise sqlite3.OperationalError("cannot open the catalog read-only")


def file_inode(path: Path | None) -> int | None:
    try:
        return os.stat(path).st_ino if path is not None else None
    except OSError:
        return None
