"""Which chunk texts have KV, under which keys, and where the KV lives: the names (name_index.py: the
catalog's rows in memory and the detection index), the entries (tiers.py: GPU, pinned CPU, a backend)
and their persistence (persister.py), kept together.

Nothing the directory says is taken on its word: an entry is used for a text only when its verified
header names that same text (a catalog row pointing text A at B's entry is dropped); other processes'
new rows are picked up before each lookup; entry files the catalog does not know (a lost or rebuilt
catalog) are adopted from their headers, and files that are not valid entries of this model are pruned.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from ..config import EngineConfig
from ..integrity import cache_secret, is_valid_key
from .catalog import ChunkRef, SqliteCatalog
from .catalog_protocol import Catalog
from .chunk_kv import ChunkKV, is_standalone
from .detect import ChunkIndex, Match
from .name_index import NameIndex
from .persister import Persister
from .tiers import ChunkStore

log = logging.getLogger(__name__)


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
        """kv_format: how entries are stored (kernels/codecs.py); disk_bytes: the persistent tier's budget
        (None: none); remote: a Redis URL: entries persist there (shared by every engine), not the directory."""
        self.namespace, self.kv_format = namespace, kv_format
        self.store = ChunkStore(model_fingerprint, device, gpu_bytes, cpu_bytes, directory, secret=secret,
                                remote=(remote, namespace) if remote else None)  # fmt: skip
        self.counts: Counter[str] = Counter()  # adopted / pruned files, mismatched rows, rebuilt catalogs
        self.catalog: Catalog
        if remote:  # the catalog is shared where the entries are: every engine detects every chunk
            from .redis_catalog import RedisCatalog

            assert self.store.remote is not None
            self.catalog = RedisCatalog(self.store.remote.redis, namespace)
        else:
            self.catalog = SqliteCatalog(directory / "catalog.sqlite" if directory else None, namespace)
        self.names = NameIndex(self.catalog, min_chunk_chars)
        self.persister = Persister(self.store, self.catalog, disk_bytes, self.counts)
        atexit.register(_flush_at_exit, weakref.ref(self))
        if directory is not None:
            self.adopt_orphans()

    @classmethod
    def from_config(
        cls, config: EngineConfig, namespace: str, model_fingerprint: str, device: torch.device
    ) -> ChunkRegistry:
        """The registry of an engine (EngineConfig): its tiers' budgets, its folder under cache_dir/kv."""
        directory = config.cache_dir / "kv" / namespace if config.persist else None
        budgets = (config.gpu_cache_bytes, config.cpu_cache_bytes)
        return cls(namespace, model_fingerprint, device, *budgets, directory, config.fusion.min_chunk_chars,
                   cache_secret(), config.kv_format, config.disk_cache_bytes, config.kv_backend)  # fmt: skip

    @property
    def index(self) -> ChunkIndex:
        """The detection index over every known text (detect.ChunkIndex)."""
        return self.names.index

    def sync(self) -> None:
        """Pick up chunks other processes added to the shared catalog since the last look."""
        if self.names.sync():
            with self.names.lock:  # lookups wait for the catalog to be whole again
                self._recatalogue()

    def _recatalogue(self) -> None:
        """The catalog was lost (a damaged file replaced by an empty one, a Redis that came back empty):
        entries on disk are catalogued again from their headers, entries only this process's memory
        tiers still hold are written back, then other processes' rows are read anew."""
        self.counts["catalog_rebuilt"] += 1
        if self.store.directory is not None:
            self.adopt_orphans(again=True)
        else:
            backend = self.store.backend
            for ref in list(self.names.by_key.values()):
                entry = self.store.in_memory(ref.key)
                if entry is not None:
                    self.counts["written_back"] += 1
                    self.add([(entry, ref.text)])
                elif backend is not None and backend.contains(ref.key):
                    self.catalog.add([ref])
        self.names.restart()

    def adopt_orphans(self, again: bool = False) -> int:
        """Catalogue entry files that no row names (their headers carry key, text and context) and prune
        files that are not entries of this model; returns how many were adopted. again: the catalog is
        new, so the files this process knows are catalogued again too."""
        adopted = self.persister.orphans(dict(self.names.by_key), again)
        self.names.catalogue(adopted)
        return len(adopted)

    def has(self, key: str) -> bool:
        if key not in self.names.by_key:
            self.sync()
        return key in self.names.by_key and self.store.contains(key)

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
        entry, ref = self.store.in_memory(key), self.names.by_key.get(key)
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
                written.append((entry, ref))
            self.names.remember(ref)
        self.persister.write(written)

    def flush(self) -> None:
        """Return once everything added is on disk and in the catalog."""
        self.persister.flush()

    def refs_for(self, text: str, tenant: str = "") -> list[ChunkRef]:
        return self.names.refs_for(text, tenant)

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
        return [ref.key for text in texts for ref in self.names.refs_for(text.strip(), tenant)]

    def knows(self, text: str, tenant: str = "") -> bool:
        return self.names.knows(text, tenant)

    def get(self, key: str) -> ChunkKV | None:
        return self.store.get(key)

    def prefetch(self, texts: Iterable[str], tenant: str = "") -> None:
        """Read ahead, in one round trip where the backend batches, the preferred entries of these texts."""
        self.store.prefetch(refs[0].key for refs in (self.names.refs_for(t, tenant) for t in texts) if refs)

    def entry_for(self, text: str, tenant: str = "") -> ChunkKV | None:
        """The preferred verified entry of this text, or None. An entry whose header names another
        text (a swapped or planted catalog row) is never returned: its row is dropped."""
        for ref in self.names.refs_for(text, tenant):
            entry = self.store.get(ref.key)
            if entry is None:
                continue
            if entry.text == text and entry.context_id == ref.context_id:
                self.names.touch(ref.key)
                return entry
            self.counts["mismatched"] += 1
            log.warning("catalog row for key %s names another text than its entry; dropped", ref.key[:12])
            self.names.drop_row(ref)
            self.names.catalogue([ChunkRef(entry.key, entry.text, entry.context_id, entry.num_tokens)])  # its own
        return None

    def find(self, prompt: str, tenant: str = "") -> list[Match]:
        """The tenant's chunks inside the prompt (another tenant's neither match nor hide one)."""
        self.sync()
        return self.names.find(prompt, tenant)

    def forget(self, keys: Iterable[str], tenant: str | None = None) -> list[ChunkRef]:
        """Remove these entries everywhere; tenant: only those of that tenant (None: any). Returns the
        refs removed, known here or in the catalog (also while a shared catalog is unreachable)."""
        keys = [k for k in dict.fromkeys(keys) if is_valid_key(k)]
        if tenant is not None:
            keys = [k for k in keys if self.names.tenant_of(k) == tenant]
        self.store.forget(keys)
        removed = {ref.key: ref for ref in self.catalog.remove(keys)}
        self.names.forget(keys, removed)
        return list(removed.values())

    def __len__(self) -> int:
        return len(self.names)


def _flush_at_exit(ref: weakref.ref) -> None:
    registry = ref()
    if registry is not None:
        registry.flush()
