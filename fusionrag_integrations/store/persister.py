"""The durable side of the chunk store: entries written to the backend off the step loop (a writer
thread; device entries copied to the host through pinned staging slots), catalogued once they are
written, the disk budget kept (least recently used files go first), and entry files nobody catalogued
(a lost or rebuilt catalog) adopted from their headers, files that are not entries of this model pruned.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch

from .catalog import ChunkRef
from .catalog_protocol import Catalog
from .chunk_kv import FORMAT_VERSION, ChunkKV, CorruptEntryError, read_header
from .entry_files import entry_files, remove_stale_temp_files
from .ingest import Writer
from .staging import PinnedStaging
from .tiers import ChunkStore

log = logging.getLogger(__name__)
WRITE_BATCH = 8  # entries per writer batch: fewer than the staging slots minus what the writer queue holds


class Persister:
    def __init__(self, store: ChunkStore, catalog: Catalog, disk_budget: int | None, counts: Counter[str]) -> None:
        self.store, self.catalog, self.disk_budget, self.counts = store, catalog, disk_budget, counts
        self.writer = Writer(self._persist)
        self.staging = PinnedStaging()

    def write(self, pairs: list[tuple[ChunkKV, ChunkRef]]) -> None:
        """Queue entries for the backend, in batches of WRITE_BATCH (a device entry is copied to a pinned
        slot first; a batch reaches the writer before more slots are taken). Any thread may call it."""
        batch: list[tuple[ChunkKV, ChunkRef, torch.Tensor | None]] = []
        for entry, ref in pairs:
            host, slot = self.staging.copy(entry) if self._staged(entry) else (entry, None)
            batch.append((host, ref, slot))
            if len(batch) == WRITE_BATCH:
                self.writer.submit(batch)
                batch = []
        if batch:
            self.writer.submit(batch)

    @staticmethod
    def _staged(entry: ChunkKV) -> bool:
        return entry.device.type == "cuda"  # its copy to the host goes through a pinned staging slot

    def flush(self) -> None:
        """Return once everything written is stored and catalogued."""
        self.writer.flush()

    def _persist(self, written: list[tuple[ChunkKV, ChunkRef, torch.Tensor | None]]) -> None:
        """On the writer thread: write, catalogue what reached the backend, keep the disk within budget."""
        try:
            stored = self.store.persist_many([entry for entry, _, _ in written])
        finally:
            for _, _, slot in written:
                if slot is not None:
                    self.staging.release(slot)
        persisted = [ref for (_, ref, _), size in zip(written, stored) if size]
        sizes = [(ref.key, size) for (_, ref, _), size in zip(written, stored) if size]
        self.catalog.add(persisted)
        self.catalog.record(sizes)
        self.enforce_budget()

    def enforce_budget(self, budget: int | None = None) -> int:
        """Delete the least recently used entry files until the disk holds at most `budget` bytes (default:
        disk_cache_bytes); returns how many went. Memory tiers keep what they hold; the catalog forgets them."""
        budget = self.disk_budget if budget is None else budget
        total = self.catalog.disk_bytes() if budget is not None else 0
        backend = self.store.backend
        if budget is None or backend is None or total <= budget:
            return 0
        victims = []
        for key, size, _ in self.catalog.least_recent():
            if total <= budget:
                break
            victims.append(key)
            total -= size
        for key in victims:
            backend.delete(key)
        self.catalog.remove(victims)
        self.counts["evicted_from_disk"] += len(victims)
        return len(victims)

    def orphans(self, known: dict[str, ChunkRef], again: bool) -> list[ChunkRef]:
        """Refs of the entry files in the directory that `known` lacks (read from their headers); files
        that are not entries of this model are pruned. again: the catalog is new, so the known files are
        catalogued again too. The caller catalogues and indexes what this returns."""
        directory = self.store.directory
        if directory is None or not directory.is_dir():
            return []
        adopted, sizes, rows = [], [], []
        self.counts["stale_temp_removed"] += remove_stale_temp_files(directory)
        for path in entry_files(directory):
            key = path.name[: -len(".safetensors")]
            sizes.append((key, path.stat().st_size))
            if key in known:
                rows.append(known[key])
                continue
            ref = self._ref_from_header(path, key)
            if ref is None:
                self.counts["pruned"] += 1
                self.store.discard(path)
            else:
                adopted.append(ref)
        if again:
            self.catalog.add(rows)
        self.catalog.record(sizes, replace=False)  # entries written before the budget existed count too
        if adopted:
            self.counts["adopted"] += len(adopted)
            log.info("adopted %d chunk-KV entries the catalog did not list", len(adopted))
        return adopted

    def _ref_from_header(self, path: Path, key: str) -> ChunkRef | None:
        try:
            meta = read_header(path)
        except CorruptEntryError:
            return None
        fields = (meta.get("text"), meta.get("context_id"))
        if (
            meta.get("format") != FORMAT_VERSION
            or meta.get("key") != key
            or meta.get("model_fingerprint") != self.store.model_fingerprint
            or not all(isinstance(f, str) for f in fields)
        ):
            return None
        return ChunkRef(key, meta["text"], meta["context_id"], 0)
