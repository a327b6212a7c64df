"""Tiered chunk-KV store: GPU LRU -> CPU LRU (pinned when CUDA) -> disk directory.

Reads fall through the tiers and promote what they find; writes go to the hot tier and
straight through to disk, which is the persistent cache a new process reuses. A disk
entry that is truncated, corrupted or made by another model is logged, deleted and
reported as a miss, so the caller recomputes it: a bad entry is never used.

Persisting is best effort: a full disk, a quota, a read-only directory or something else
sitting at an entry's path costs the reuse of that entry in later processes, not the
request that computed it (it stays in the memory tiers; `counts["write_failed"]` says so).
Keys are checked (64 hex digits) before they become paths, so nothing outside the
directory is ever read or deleted through a key.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError

from .chunk_kv import ChunkKV, CorruptEntryError, read_entry, write_entry
from .integrity import is_valid_key

log = logging.getLogger(__name__)


class LRUTier:
    """Entries on one device, least recently used first out, under a byte budget."""

    def __init__(self, device: torch.device, budget_bytes: int) -> None:
        self.device = device
        self.budget = budget_bytes
        self.used = 0
        self.entries: OrderedDict[str, ChunkKV] = OrderedDict()

    def get(self, key: str) -> ChunkKV | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, entry: ChunkKV) -> list[ChunkKV]:
        """Insert (moving the entry to this device); return what was evicted to make room."""
        if entry.nbytes > self.budget:
            return [entry]
        self.pop(entry.key)
        entry = entry.to(self.device, pin=self.device.type == "cpu")
        self.entries[entry.key] = entry
        self.used += entry.nbytes
        evicted = []
        while self.used > self.budget:
            _, old = self.entries.popitem(last=False)
            self.used -= old.nbytes
            evicted.append(old)
        return evicted

    def pop(self, key: str) -> ChunkKV | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.used -= entry.nbytes
        return entry


class ChunkStore:
    def __init__(
        self,
        model_fingerprint: str,
        device: torch.device,
        gpu_bytes: int,
        cpu_bytes: int,
        directory: Path | None,
        hot_tier: bool | None = None,
        secret: bytes = b"",
    ) -> None:
        """hot_tier: keep a tier on `device` in front of the CPU one (default: when device is CUDA).
        secret: the HMAC key of the disk entries (integrity.cache_secret())."""
        self.model_fingerprint = model_fingerprint
        self.secret = secret
        self.device = device
        self.gpu = LRUTier(device, gpu_bytes) if (device.type == "cuda" if hot_tier is None else hot_tier) else None
        self.cpu = LRUTier(torch.device("cpu"), cpu_bytes)
        self.directory = directory
        self._real_directory = os.path.realpath(directory) if directory is not None else ""
        self.counts: Counter[str] = Counter()  # hits per tier, misses, corrupt entries, failed writes

    def path(self, key: str) -> Path | None:
        """Where the entry lives on disk; None without a directory or for a key that is not a key."""
        if self.directory is None or not is_valid_key(key):
            return None
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> ChunkKV | None:
        """The entry on the engine's device, or None (also when the disk copy was bad)."""
        if self.gpu is not None and (entry := self.gpu.get(key)) is not None:
            self.counts["gpu"] += 1
            return entry
        if (entry := self.cpu.get(key)) is not None:
            self.counts["cpu"] += 1
            return self._promote(entry)
        entry = self._read_disk(key)
        if entry is None:
            self.counts["miss"] += 1
            return None
        self.counts["disk"] += 1
        return self._promote(entry)

    def put(self, entry: ChunkKV) -> bool:
        """Keep the entry in memory and write it through to disk; returns whether it is on disk."""
        persisted = self._write(entry)
        self._promote(entry)
        return persisted

    def _write(self, entry: ChunkKV) -> bool:
        path = self.path(entry.key)
        if path is None:
            return False
        if path.parent.exists() and not self._inside(path.parent):
            self.counts["write_failed"] += 1
            log.warning("not writing %s: its folder resolves outside the cache directory", path.name)
            return False
        try:
            write_entry(entry, path, self.secret)
            return True
        except (OSError, SafetensorError) as exc:  # disk full, quota, read-only, a folder in the way: keep in memory
            self.counts["write_failed"] += 1
            if self.counts["write_failed"] == 1 or self.counts["write_failed"] % 100 == 0:
                log.warning("cannot persist chunk KV under %s (%s); kept in memory only", self.directory, exc)
            return False

    def _inside(self, path: Path) -> bool:
        real = os.path.realpath(path)
        return os.path.commonpath([real, self._real_directory]) == self._real_directory

    def contains(self, key: str) -> bool:
        in_memory = key in self.cpu.entries or (self.gpu is not None and key in self.gpu.entries)
        path = self.path(key)
        return in_memory or (path is not None and path.is_file())

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.cpu.pop(key)
            if self.gpu is not None:
                self.gpu.pop(key)
            path = self.path(key)
            if path is not None:
                self.discard(path)

    def _promote(self, entry: ChunkKV) -> ChunkKV:
        """Place in the hottest tier; GPU evictions fall to the CPU tier."""
        if self.gpu is None:
            self.cpu.put(entry)
            return entry if entry.device.type == "cpu" else entry.to(torch.device("cpu"))
        evicted = self.gpu.put(entry)
        if any(old.key == entry.key for old in evicted):  # larger than the hot tier: it lives in the CPU tier
            self.cpu.put(entry)
            return entry.to(self.device)
        self.cpu.pop(entry.key)  # tiers are exclusive: a promoted entry leaves the CPU tier
        for old in evicted:
            self.cpu.put(old)
        return self.gpu.get(entry.key)

    def _read_disk(self, key: str) -> ChunkKV | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        if not self._inside(path):  # a symlink (entry or shard) planted to point elsewhere
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

    def discard(self, path: Path) -> None:
        """Delete an entry file (a symlink itself, never its target; nothing through a symlinked folder)."""
        if not self._inside(path.parent):
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # read-only directory: the entry stays, and stays rejected
            log.debug("cannot delete %s: %s", path, exc)
