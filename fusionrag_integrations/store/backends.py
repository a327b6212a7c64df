"""Where chunk KV persists beyond the memory tiers: the storage-backend interface and the local
directory backend (a shared remote backend, Redis, implements the same five calls).

A backend returns an entry only complete and verified (header, HMAC, model fingerprint, its own
key): a truncated, corrupted or foreign entry is logged, deleted and reported as a miss, so the
caller recomputes it. Writes are best effort: a full disk, a quota, a read-only directory or
something else at an entry's path costs the reuse of that entry in later processes, not the
request that computed it (`counts["write_failed"]` says so). Keys are checked (64 hex digits)
before they become paths, and nothing is read, written or deleted through a symlink out of the
directory.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from safetensors import SafetensorError

from ..integrity import is_valid_key
from .chunk_kv import ChunkKV, CorruptEntryError, read_entry, write_entry

log = logging.getLogger(__name__)


class Backend(Protocol):
    tier: str  # its name in hit counts and metrics

    def put(self, entry: ChunkKV) -> int: ...  # bytes stored (0: not persisted)

    def put_many(self, entries: Sequence[ChunkKV]) -> list[int]: ...  # a write batch, in few round trips

    def get(self, key: str) -> ChunkKV | None: ...  # complete and verified, or None

    def get_many(self, keys: Sequence[str]) -> list[ChunkKV | None]: ...  # a request's reads, in few round trips

    def contains(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def close(self) -> None: ...


class LocalDirBackend:
    """One safetensors file per entry under `directory/<key[:2]>/`, written to a temp file and renamed."""

    tier = "disk"  # its name in the store's hit counts and metrics

    def __init__(self, directory: Path, model_fingerprint: str, secret: bytes, counts: Counter[str]) -> None:
        self.directory, self.model_fingerprint, self.secret, self.counts = directory, model_fingerprint, secret, counts
        self._real_directory = os.path.realpath(directory)

    def path(self, key: str) -> Path | None:
        """Where the entry lives; None for a key that is not a key."""
        return self.directory / key[:2] / f"{key}.safetensors" if is_valid_key(key) else None

    def put(self, entry: ChunkKV) -> int:
        path = self.path(entry.key)
        if path is None:
            return 0
        if path.parent.exists() and not self.inside(path.parent):
            self.counts["write_failed"] += 1
            log.warning("not writing %s: its folder resolves outside the cache directory", path.name)
            return 0
        try:
            write_entry(entry, path, self.secret)
            return path.stat().st_size
        except (OSError, SafetensorError) as exc:  # disk full, quota, read-only, a folder in the way: keep in memory
            self.counts["write_failed"] += 1
            if self.counts["write_failed"] == 1 or self.counts["write_failed"] % 100 == 0:
                log.warning("cannot persist chunk KV under %s (%s); kept in memory only", self.directory, exc)
            return 0

    def get(self, key: str) -> ChunkKV | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        if not self.inside(path):  # a symlink (entry or shard) planted to point elsewhere
            self.counts["corrupt"] += 1
            log.warning("discarding chunk-KV entry %s: it resolves outside the cache directory", path.name)
            self.discard(path)
            return None
        try:
            return read_entry(path, key, self.model_fingerprint, self.secret)
        except CorruptEntryError as exc:
            self.counts["corrupt"] += 1
            log.warning("discarding chunk-KV entry %s (%s); it will be recomputed", path.name, exc)
            self.discard(path)
            return None
        except OSError as exc:  # unreadable (permissions, I/O error): a miss, not a failed request
            self.counts["read_failed"] += 1
            log.warning("cannot read chunk-KV entry %s (%s); it will be recomputed", path.name, exc)
            return None

    def contains(self, key: str) -> bool:
        path = self.path(key)
        return path is not None and path.is_file()

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path is not None:
            self.discard(path)

    def put_many(self, entries: Sequence[ChunkKV]) -> list[int]:
        return [self.put(e) for e in entries]

    def get_many(self, keys: Sequence[str]) -> list[ChunkKV | None]:
        return [self.get(k) for k in keys]

    def close(self) -> None:
        """Nothing held open: every write is complete when put returns."""

    def inside(self, path: Path) -> bool:
        real = os.path.realpath(path)
        return os.path.commonpath([real, self._real_directory]) == self._real_directory

    def discard(self, path: Path) -> None:
        """Delete an entry file (a symlink itself, never its target; nothing through a symlinked folder)."""
        if not self.inside(path.parent):
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # read-only directory: the entry stays, and stays rejected
            log.debug("cannot delete %s: %s", path, exc)
