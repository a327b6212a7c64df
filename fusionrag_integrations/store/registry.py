"""Which chunk texts have KV, under which keys, and where the KV lives.

One object over three parts: the persistent catalog (text -> keys, shared by processes),
the in-memory detection index (finds those texts inside prompts) and the tiered KV store.

Nothing the directory says is taken on its word: an entry is used for a text only when its
verified header names that same text (a catalog row pointing text A at B's entry is dropped);
other processes' new rows are picked up before each lookup (one cheap pragma when nothing
changed); entry files the catalog does not know (a lost or rebuilt catalog) are adopted from
their headers, and files that are not valid entries of this model are pruned.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from ..integrity import cache_secret, is_valid_key
from .catalog import Catalog, ChunkRef
from .chunk_kv import FORMAT_VERSION, ChunkKV, CorruptEntryError, is_standalone, read_header, split_context
from .detect import ChunkIndex, Match
from .entry_files import entry_files, remove_stale_temp_files
from .ingest import Writer
from .staging import PinnedStaging
from .tiers import ChunkStore

log = logging.getLogger(__name__)
WRITE_BATCH = 8  # entries per writer batch: fewer than the staging slots minus what the writer queue holds


class ChunkRegistry:
    def __init__(
        self,
        namespace: str,
        model_fingerprint: str,
        device: torch.device,
        gpu_bytes: int,
        cpu_bytes: int,
        directory: Path | None,
        min_chunk_chars: int,
        secret: bytes = b"",
        kv_format: str = "native",
        disk_bytes: int | None = None,
        remote: str | None = None,
    ) -> None:
        """kv_format: how entries are stored (codecs.py); disk_bytes: the persistent tier's budget (None: none);
        remote: a Redis URL: entries persist there (shared by every engine) instead of the directory."""
        self.namespace, self.kv_format, self.disk_budget = namespace, kv_format, disk_bytes
        self.store = ChunkStore(model_fingerprint, device, gpu_bytes, cpu_bytes, directory, secret=secret,
                                remote=(remote, namespace) if remote else None)  # fmt: skip
        self.writer = Writer(self._persist)
        self.staging = PinnedStaging()
        self._touched: set[str] = set()  # keys used since the last write to the catalog's usage table
        self._touched_at = time.monotonic()
        self._touch_lock = threading.Lock()
        self._index_lock = threading.RLock()  # detection runs on callers' threads while the loop adds chunks
        atexit.register(_flush_at_exit, weakref.ref(self))
        if remote:  # the catalog is shared where the entries are: every engine detects every chunk
            from .redis_catalog import RedisCatalog

            assert self.store.remote is not None
            self.catalog = RedisCatalog(self.store.remote.redis, namespace)
        else:
            self.catalog = Catalog(directory / "catalog.sqlite" if directory else None, namespace)
        self.index = ChunkIndex(min_chunk_chars)
        self.counts: Counter[str] = Counter()  # adopted / pruned files, mismatched rows
        self._refs: dict[str, dict[str, ChunkRef]] = {}  # text -> context_id -> ref
        self._by_key: dict[str, ChunkRef] = {}
        self._tenanted = 0  # refs of salted tenants: while none, detection needs no per-text check
        self._seen_rowid = 0
        self._catalog_generation = self.catalog.generation
        self._pull()
        if directory is not None:
            self.adopt_orphans()

    @classmethod
    def from_config(cls, config, namespace: str, model_fingerprint: str, device: torch.device) -> ChunkRegistry:
        """The registry of an engine (EngineConfig): its tiers' budgets, its folder under cache_dir/kv."""
        directory = config.cache_dir / "kv" / namespace if config.persist else None
        budgets = (config.gpu_cache_bytes, config.cpu_cache_bytes)
        return cls(namespace, model_fingerprint, device, *budgets, directory, config.fusion.min_chunk_chars,
                   cache_secret(), config.kv_format, config.disk_cache_bytes, config.kv_backend)  # fmt: skip

    def _pull(self) -> None:
        refs, self._seen_rowid = self.catalog.refs_since(self._seen_rowid)
        for ref in refs:
            self._remember(ref)

    def sync(self) -> None:
        """Pick up chunks other processes added to the shared catalog since the last look (and record,
        at most once a second, which entries were used: the disk budget evicts the least recent)."""
        if self._touched and time.monotonic() - self._touched_at > 1.0:
            with self._touch_lock:
                touched, self._touched, self._touched_at = list(self._touched), set(), time.monotonic()
            self.catalog.touch(touched)
        with self._index_lock:
            if self.catalog.changed():
                self._pull()
            if self.catalog.generation != self._catalog_generation:
                self._recatalogue()

    def _recatalogue(self) -> None:
        """The catalog was lost (a damaged file replaced by an empty one, a Redis that came back empty):
        entries on disk are catalogued again from their headers, entries only this process's memory
        tiers still hold are written back, then other processes' rows are read anew."""
        self._catalog_generation = self.catalog.generation
        self.counts["catalog_rebuilt"] += 1
        self._seen_rowid = 0
        if self.store.directory is not None:
            self.adopt_orphans(again=True)
        else:
            backend = self.store.backend
            for ref in list(self._by_key.values()):
                entry = self.store.in_memory(ref.key)
                if entry is not None:
                    self.counts["written_back"] += 1
                    self.add([(entry, ref.text)])
                elif backend is not None and backend.contains(ref.key):
                    self.catalog.add([ref])
        self._pull()

    def adopt_orphans(self, again: bool = False) -> int:
        """Catalogue entry files that no row names (their headers carry key, text and context) and
        prune files that are not entries of this model; returns how many were adopted. again: the
        catalog is new, so the files this index knows are catalogued again too."""
        directory = self.store.directory
        if directory is None or not directory.is_dir():
            return 0
        adopted, sizes, known = [], [], []
        self.counts["stale_temp_removed"] += remove_stale_temp_files(directory)
        for path in entry_files(directory):
            key = path.name[: -len(".safetensors")]
            sizes.append((key, path.stat().st_size))
            if key in self._by_key:
                known.append(self._by_key[key])
                continue
            ref = self._ref_from_header(path, key)
            if ref is None:
                self.counts["pruned"] += 1
                self.store.discard(path)
            else:
                adopted.append(ref)
        if again:
            self.catalog.add(known)
        self.catalog.record(sizes, replace=False)  # entries written before the budget existed count too
        if adopted:
            self._catalogue(adopted)
            self.counts["adopted"] += len(adopted)
            log.info("adopted %d chunk-KV entries the catalog did not list", len(adopted))
        return len(adopted)

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

    def _remember(self, ref: ChunkRef) -> None:
        with self._index_lock:
            self._refs.setdefault(ref.text, {})[ref.context_id] = ref
            if ref.key not in self._by_key:
                self._tenanted += bool(split_context(ref.context_id)[1])
            self._by_key[ref.key] = ref
            self.index.add(ref.text)

    def has(self, key: str) -> bool:
        if key not in self._by_key:
            self.sync()
        return key in self._by_key and self.store.contains(key)

    def stored(self, keys: list[str]) -> int:
        """How many of these entries are stored durably: in the backend (in memory without one)."""
        backend = self.store.backend
        return sum(1 for k in keys if (backend.contains(k) if backend is not None else self.store.contains(k)))

    def event_counts(self) -> dict[str, int]:
        """The store's and the registry's counters together (a dict copy)."""
        return {**self.store.counts, **self.counts}

    def holds(self, key: str) -> bool:
        """Whether the entry is stored to serve later requests and processes: in the backend, or (without
        one) in memory. An entry only a memory tier still has (the backend lost it: Redis restarted
        empty, a value evicted, a file deleted) is written back now, so ingesting it again restores it."""
        if not self.has(key):
            return False
        backend = self.store.backend
        if backend is None or backend.contains(key):
            return True
        entry, ref = self.store.in_memory(key), self._by_key.get(key)
        if entry is None or ref is None:
            return False  # only the backend was thought to hold it: compute it again
        self.counts["written_back"] += 1
        self.add([(entry, ref.text)])
        return True

    def add(self, entries: list[tuple[ChunkKV, str]], persist: bool = True) -> None:
        """Store (entry, text) pairs in the store's format and make their texts detectable now; the
        writer thread persists them and then catalogues them for other processes (`flush` waits).
        persist=False: memory tiers only (the backend already holds them)."""
        written = []
        for entry, text in entries:
            entry = entry.compacted(self.kv_format)
            ref = ChunkRef(entry.key, text, entry.context_id, entry.num_tokens)
            self.store.keep(entry)
            if self.store.backend is not None and persist:
                host, slot = self.staging.copy(entry) if self._staged(entry) else (entry, None)
                written.append((host, ref, slot))
                if len(written) == WRITE_BATCH:  # staged copies reach the writer before more slots are taken
                    self.writer.submit(written)
                    written = []
            self._remember(ref)
        if written:
            self.writer.submit(written)

    @staticmethod
    def _staged(entry: ChunkKV) -> bool:
        return entry.device.type == "cuda"  # its copy to the host goes through a pinned staging slot

    def flush(self) -> None:
        """Return once everything added is on disk and in the catalog."""
        self.writer.flush()

    def _persist(self, written: list[tuple[ChunkKV, ChunkRef, torch.Tensor | None]]) -> None:
        """On the writer thread: write, catalogue what reached the disk, keep the disk within budget."""
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
        if budget is None or total <= budget:
            return 0
        victims = []
        for key, size, _ in self.catalog.least_recent():
            if total <= budget:
                break
            victims.append(key)
            total -= size
        for key in victims:
            self.store.backend.delete(key)
        self.catalog.remove(victims)
        self.counts["evicted_from_disk"] += len(victims)
        return len(victims)

    def _catalogue(self, refs: list[ChunkRef]) -> None:
        """Catalog entries whose KV is already on disk (written by another process)."""
        self.catalog.add(refs)
        for ref in refs:
            self._remember(ref)

    def refs_for(self, text: str, tenant: str = "") -> list[ChunkRef]:
        """This tenant's refs of this text, the preferred first: context-aware entries, newest first
        (neighbour sets change as a store grows), then the standalone one."""
        refs = [r for r in list(self._refs.get(text, {}).values())[::-1] if split_context(r.context_id)[1] == tenant]
        return sorted(refs, key=lambda r: is_standalone(r.context_id))

    def cheaper_to_compute(self, ref: ChunkRef) -> bool:
        """Whether this standalone entry, held by the backend alone, reads back slower than it computes."""
        store = self.store
        if not is_standalone(ref.context_id) or store.in_memory_or_absent(ref.key):
            return False  # context-aware KV cannot be recomputed from the text alone
        if store.cost.compute_is_faster(ref.num_tokens):
            self.counts["computed_not_fetched"] += 1
            return True
        return False

    def keys_of(self, texts: list[str], tenant: str = "") -> list[str]:
        """Every key of these texts (stripped) in the tenant's space, after picking up other processes' rows."""
        self.sync()
        return [ref.key for text in texts for ref in self.refs_for(text.strip(), tenant)]

    def knows(self, text: str, tenant: str = "") -> bool:
        return bool(self.refs_for(text, tenant))

    def get(self, key: str) -> ChunkKV | None:
        return self.store.get(key)

    def prefetch(self, texts: Iterable[str], tenant: str = "") -> None:
        """Read ahead, in one round trip where the backend batches, the preferred entries of these texts."""
        self.store.prefetch(refs[0].key for refs in (self.refs_for(t, tenant) for t in texts) if refs)

    def entry_for(self, text: str, tenant: str = "") -> ChunkKV | None:
        """The preferred verified entry of this text, or None. An entry whose header names another
        text (a swapped or planted catalog row) is never returned: its row is dropped."""
        for ref in self.refs_for(text, tenant):
            entry = self.store.get(ref.key)
            if entry is None:
                continue
            if entry.text == text and entry.context_id == ref.context_id:
                with self._touch_lock:
                    self._touched.add(ref.key)
                return entry
            self.counts["mismatched"] += 1
            log.warning("catalog row for key %s names another text than its entry; dropped", ref.key[:12])
            self._drop_row(ref)
            self._catalogue([ChunkRef(entry.key, entry.text, entry.context_id, entry.num_tokens)])  # its own text
        return None

    def _drop_row(self, ref: ChunkRef) -> None:
        self.catalog.drop(ref)
        with self._index_lock:
            self._unindex_row(ref)

    def _unindex_row(self, ref: ChunkRef) -> None:
        by_context = self._refs.get(ref.text, {})
        if by_context.get(ref.context_id) == ref:
            by_context.pop(ref.context_id)
        if not by_context:
            self._refs.pop(ref.text, None)
            self.index.remove(ref.text)
        if self._by_key.get(ref.key) == ref:
            self._by_key.pop(ref.key)
            self._tenanted -= bool(split_context(ref.context_id)[1])

    def find(self, prompt: str, tenant: str = "") -> list[Match]:
        """The tenant's chunks inside the prompt (another tenant's neither match nor hide one)."""
        self.sync()
        with self._index_lock:
            only_shared = not tenant and self._tenanted == 0
            return self.index.find(prompt, None if only_shared else lambda text: self.knows(text, tenant))

    def forget(self, keys: Iterable[str], tenant: str | None = None) -> list[ChunkRef]:
        """Remove these entries everywhere; tenant: only those of that tenant (None: any). Returns the
        refs removed, known here or in the catalog (also while a shared catalog is unreachable)."""
        keys = [k for k in dict.fromkeys(keys) if is_valid_key(k)]
        if tenant is not None:
            keys = [k for k in keys if k in self._by_key and split_context(self._by_key[k].context_id)[1] == tenant]
        self.store.forget(keys)
        removed = {ref.key: ref for ref in self.catalog.remove(keys)}
        with self._index_lock:
            self._unindex(keys, removed)
        return list(removed.values())

    def _unindex(self, keys: list[str], removed: dict[str, ChunkRef]) -> None:
        for key in keys:
            ref = self._by_key.pop(key, None)
            if ref is None:
                continue
            removed[key] = ref
            self._tenanted -= bool(split_context(ref.context_id)[1])
            by_context = self._refs.get(ref.text, {})
            by_context.pop(ref.context_id, None)
            if not by_context:
                self._refs.pop(ref.text, None)
                self.index.remove(ref.text)

    def __len__(self) -> int:
        return len(self._by_key)


def _flush_at_exit(ref: weakref.ref) -> None:
    registry = ref()
    if registry is not None:
        registry.flush()
