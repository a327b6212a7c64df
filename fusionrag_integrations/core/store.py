"""Tiered chunk-KV store: GPU LRU -> CPU LRU (pinned when CUDA) -> disk directory.

Reads fall through the tiers and promote what they find; writes go to the hot tier and
straight through to disk, which is the persistent cache a new process reuses. A disk
entry that is truncated, corrupted or made by another model is logged, deleted and
reported as a miss, so the caller recomputes it: a bad entry is never used.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch

from .chunk_kv import ChunkKV, CorruptEntryError, read_entry, write_entry

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
    ) -> None:
        """hot_tier: keep a tier on `device` in front of the CPU one (default: when device is CUDA)."""
        self.model_fingerprint = model_fingerprint
        self.device = device
        self.gpu = LRUTier(device, gpu_bytes) if (device.type == "cuda" if hot_tier is None else hot_tier) else None
        self.cpu = LRUTier(torch.device("cpu"), cpu_bytes)
        self.directory = directory
        self.counts: Counter[str] = Counter()  # hits per tier, misses, corrupt entries

    def path(self, key: str) -> Path:
        assert self.directory is not None
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

    def put(self, entry: ChunkKV) -> None:
        if self.directory is not None:
            write_entry(entry, self.path(entry.key))
        self._promote(entry)

    def contains(self, key: str) -> bool:
        in_memory = key in self.cpu.entries or (self.gpu is not None and key in self.gpu.entries)
        return in_memory or (self.directory is not None and self.path(key).is_file())

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.cpu.pop(key)
            if self.gpu is not None:
                self.gpu.pop(key)
            if self.directory is not None:
                self.path(key).unlink(missing_ok=True)

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
        if self.directory is None:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return read_entry(path, key, self.model_fingerprint)
        except CorruptEntryError as exc:
            self.counts["corrupt"] += 1
            log.warning("discarding chunk-KV entry %s (%s); it will be recomputed", path.name, exc)
            path.unlink(missing_ok=True)
            return None
