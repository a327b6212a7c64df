"""Tiered chunk-KV store: GPU LRU -> CPU LRU (pinned when CUDA) -> a persistent backend.

Reads fall through the tiers and promote what they find; writes go to the hot tier and straight
through to the backend (backends.py), which is what a new process reuses. Nothing the GPU tier
evicts is lost while the CPU tier has room: an entry read from the CPU tier keeps its pinned copy
there (inclusive, so its eviction costs nothing), and an entry that only the GPU tier held (ingested
on the GPU) is copied down to the CPU tier when it is evicted (asynchronously, into pinned memory
from the caching host allocator: ingest does not pin every chunk it computes, only what overflows).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..lru import LRU
from .backends import Backend, LocalDirBackend

if TYPE_CHECKING:
    from .redis_backend import RedisBackend
from .chunk_kv import ChunkKV
from .fetch_cost import FetchCost
from .pinning import use_threaded_pinning


class LRUTier:
    """Entries on one device, least recently used first out, under a byte budget."""

    def __init__(self, device: torch.device, budget_bytes: int) -> None:
        self.device, self.budget = device, budget_bytes
        self.entries: LRU[str, ChunkKV] = LRU(max_bytes=budget_bytes, size=lambda e: e.nbytes)

    @property
    def used(self) -> int:
        return self.entries.used

    def get(self, key: str) -> ChunkKV | None:
        return self.entries.get(key)

    def put(self, entry: ChunkKV) -> list[ChunkKV]:
        """Insert (moving the entry to this device); return what was evicted to make room."""
        if entry.nbytes > self.budget:
            return [entry]
        entry = entry.to(self.device, pin=self.device.type == "cpu")
        return [old for _, old in self.entries.put(entry.key, entry)]

    def pop(self, key: str) -> ChunkKV | None:
        return self.entries.pop(key)


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
        remote: tuple[str, str] | None = None,
    ) -> None:
        """hot_tier: keep a tier on `device` in front of the CPU one (default: when device is CUDA).
        directory: the local backend's (None: memory only). secret: the entries' MAC key. remote: (Redis URL,
        store namespace): entries persist in Redis instead of the directory (a tier shared by every engine)."""
        self.model_fingerprint, self.secret, self.device, self.directory = model_fingerprint, secret, device, directory
        self.gpu = LRUTier(device, gpu_bytes) if (device.type == "cuda" if hot_tier is None else hot_tier) else None
        # promotions to the GPU copy on their own stream: a request laid out ahead of its admission has its
        # chunks moving while the step's compute runs (the compute waits for them only where it reads them)
        self.copy_stream = torch.cuda.Stream(device) if self.gpu is not None and device.type == "cuda" else None
        if self.copy_stream is not None:  # what the GPU tier evicts is pinned: from several threads (pinning.py)
            use_threaded_pinning()
        self._lock = threading.RLock()  # the tiers are used by the step loop, callers and the writer
        self.cpu = LRUTier(torch.device("cpu"), cpu_bytes)
        self.counts: Counter[str] = Counter()  # hits per tier, misses, corrupt entries, failed writes
        self._fetched: dict[str, ChunkKV | None] = {}  # read ahead from the backend for the request being laid out
        self.cost = FetchCost()  # how fast the backend reads (and the model computes: the executor says)
        self.last_tier = "miss"
        self.backend: Backend | None
        if remote is not None:  # the shared tier replaces the directory (no local files to adopt or prune)
            from .redis_backend import RedisBackend

            self.remote: RedisBackend | None = RedisBackend(*remote, model_fingerprint, secret, self.counts)
            self.directory, self.local, self.backend = None, None, self.remote
        else:
            # each backend also kept as what it is: the local one's files are what the catalog adopts and
            # `cache prune` trims, the remote one's connection is the shared catalog's
            self.local = LocalDirBackend(directory, model_fingerprint, secret, self.counts) if directory else None
            self.remote, self.backend = None, self.local

    def path(self, key: str) -> Path | None:
        """Where the entry lives on disk; None without a directory or for a key that is not a key."""
        return self.local.path(key) if self.local is not None else None

    def get(self, key: str) -> ChunkKV | None:
        """The entry on the engine's device, or None (also when the persisted copy was bad)."""
        with self._lock:
            if self.gpu is not None and (entry := self.gpu.get(key)) is not None:
                return self._served("gpu", entry)
            if (entry := self.cpu.get(key)) is not None:
                return self._served("cpu", self._promote(entry))
        if key in self._fetched:  # this request's read-ahead already asked the backend (None: absent there)
            entry = self._fetched.pop(key)
        else:
            entry = self._timed_reads([key])[0] if self.backend is not None else None
        if entry is None:
            self.counts["miss"] += 1
            self.last_tier = "miss"
            return None
        assert self.backend is not None  # the entry came from it
        with self._lock:
            return self._served(self.backend.tier, self._promote(entry))

    def _served(self, tier: str, entry: ChunkKV) -> ChunkKV:
        self.counts[tier] += 1
        self.last_tier = tier  # where the latest get found its entry (a request's hot-tier hits)
        return entry

    def prefetch(self, keys: Iterable[str]) -> None:
        """Read the entries a request is about to use that no memory tier holds in one round trip, where the
        backend batches (Redis: one MGET instead of one GET per chunk). `get` then takes them from here (and
        the reads' speed is measured: the fetch-or-recompute choice, fetch_cost.py)."""
        if self.backend is None:
            return
        wanted = [
            k
            for k in dict.fromkeys(keys)
            if k not in self.cpu.entries and (self.gpu is None or k not in self.gpu.entries)
        ]
        self._fetched = dict(zip(wanted, self._timed_reads(wanted))) if wanted else {}

    def _timed_reads(self, keys: list[str]) -> list[ChunkKV | None]:
        assert self.backend is not None, "reads go to the backend only where there is one"
        t0 = time.perf_counter()
        entries = self.backend.get_many(keys)
        found = [e for e in entries if e is not None]
        self.cost.read(sum(e.nbytes for e in found), sum(e.num_tokens for e in found), time.perf_counter() - t0)
        return entries

    def in_memory_or_absent(self, key: str) -> bool:
        """Whether reading the entry costs no backend round trip (a memory tier holds it, or nothing does)."""
        return self._in_memory(key) or self.backend is None

    def _in_memory(self, key: str) -> bool:
        return key in self.cpu.entries or (self.gpu is not None and key in self.gpu.entries)

    def put(self, entry: ChunkKV) -> bool:
        """Keep the entry in memory and write it through; returns whether it persisted."""
        self.keep(entry)
        return bool(self.persist(entry))

    def keep(self, entry: ChunkKV) -> None:
        """A new entry into the memory tiers: a device entry into the GPU tier (its copy on the way to disk
        is staged apart; it reaches the CPU tier when the GPU tier evicts it), a host entry into the CPU tier."""
        with self._lock:
            if self.gpu is not None and entry.device.type == "cuda" and entry.nbytes <= self.gpu.budget:
                self._into_gpu(entry)
            else:
                self._promote(entry)

    def _into_gpu(self, entry: ChunkKV) -> list[ChunkKV]:
        """Put into the GPU tier; what it evicts and the CPU tier lacks is demoted there, not dropped (into
        pinned memory, the copy asynchronous; pinning is the cost, paid from several threads: pinning.py)."""
        assert self.gpu is not None
        evicted = self.gpu.put(entry)
        for old in evicted:
            if old.key != entry.key and old.key not in self.cpu.entries:
                self.counts["demoted"] += 1
                self.cpu.put(old)
        return evicted

    def persist(self, entry: ChunkKV) -> int:
        """Write to the backend; the bytes it took on disk (0: not persisted)."""
        return self.backend.put(entry) if self.backend is not None else 0

    def persist_many(self, entries: list[ChunkKV]) -> list[int]:
        """A write batch: one round trip where the backend batches (Redis), else one write per entry."""
        return self.backend.put_many(entries) if self.backend is not None else [0] * len(entries)

    def in_memory(self, key: str) -> ChunkKV | None:
        """The entry a memory tier holds (the GPU copy first), without counting a hit or moving it."""
        with self._lock:
            entry = self.gpu.entries.peek(key) if self.gpu is not None else None
            return entry if entry is not None else self.cpu.entries.peek(key)

    def contains(self, key: str) -> bool:
        return self._in_memory(key) or (self.backend is not None and self.backend.contains(key))

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            with self._lock:
                self.cpu.pop(key)
                if self.gpu is not None:
                    self.gpu.pop(key)
            if self.backend is not None:
                self.backend.delete(key)

    def discard(self, path: Path) -> None:
        if self.local is not None:
            self.local.discard(path)

    def _promote(self, entry: ChunkKV) -> ChunkKV:
        """Place in the hottest tier. The pinned CPU tier keeps a copy of what the GPU tier holds
        (inclusive): a GPU eviction is then free (no device-to-host copy, no pinned allocation on the
        request's path), which matters once the working set outgrows the GPU tier."""
        if entry.device.type != "cpu" or entry.key not in self.cpu.entries:
            self.cpu.put(entry)
        else:
            self.cpu.get(entry.key)  # most recently used there too
        if self.gpu is None:
            return entry if entry.device.type == "cpu" else entry.to(torch.device("cpu"))
        if self.copy_stream is not None and entry.device.type == "cpu":  # from its pinned CPU-tier copy
            entry = (self.cpu.entries.peek(entry.key) or entry).to_device_on(self.device, self.copy_stream)
        evicted = self._into_gpu(entry)
        if any(old.key == entry.key for old in evicted):  # larger than the hot tier: it lives in the CPU tier
            return entry.to(self.device)
        placed = self.gpu.get(entry.key)
        return placed if placed is not None else entry
