"""Names: which chunk texts have entries, under which keys, in which cache space, and where those texts
occur inside a prompt. An in-memory mirror of the catalog (text -> refs) kept in step with it, plus the
detection index over the texts; the registry (registry.py) keeps it and the entries together.

Other processes' new rows are picked up before each lookup (`sync`: one cheap check when nothing
changed); a catalog that was lost and recreated is reported to the caller, who catalogues again what
it holds. Detection runs on callers' threads while the loop adds chunks: every change takes the lock.
"""

from __future__ import annotations

import threading
import time

from .catalog import ChunkRef
from .catalog_protocol import Catalog
from .chunk_kv import is_standalone, split_context
from .detect import ChunkIndex, Match

TOUCH_EVERY_S = 1.0  # how often the keys used are written to the catalog's usage table (the disk budget's LRU)


class NameIndex:
    def __init__(self, catalog: Catalog, min_chunk_chars: int) -> None:
        self.catalog = catalog
        self.index = ChunkIndex(min_chunk_chars)
        self.refs: dict[str, dict[str, ChunkRef]] = {}  # text -> context_id -> ref
        self.by_key: dict[str, ChunkRef] = {}
        self.lock = threading.RLock()
        self._tenanted = 0  # refs of salted tenants: while none, detection needs no per-text check
        self._seen_rowid = 0
        self._generation = catalog.generation
        self._touched: set[str] = set()  # keys used since the last write to the catalog's usage table
        self._touched_at = time.monotonic()
        self._touch_lock = threading.Lock()
        self.pull()

    def pull(self) -> None:
        """Read the catalog's rows added since the last look."""
        refs, self._seen_rowid = self.catalog.refs_since(self._seen_rowid)
        for ref in refs:
            self.remember(ref)

    def sync(self) -> bool:
        """Pick up other processes' rows (and record, at most once a second, which entries were used).
        True when the catalog was lost since the last look: the caller catalogues again what it holds,
        then calls `restart`."""
        if self._touched and time.monotonic() - self._touched_at > TOUCH_EVERY_S:
            with self._touch_lock:
                touched, self._touched, self._touched_at = list(self._touched), set(), time.monotonic()
            self.catalog.touch(touched)
        with self.lock:
            if self.catalog.changed():
                self.pull()
            lost = self.catalog.generation != self._generation
            self._generation = self.catalog.generation  # one caller catalogues again, not every one
            return lost

    def restart(self) -> None:
        """After a lost catalog was catalogued again: every row is read anew."""
        with self.lock:
            self._seen_rowid = 0
            self.pull()

    def touch(self, key: str) -> None:
        with self._touch_lock:
            self._touched.add(key)

    def remember(self, ref: ChunkRef) -> None:
        with self.lock:
            self.refs.setdefault(ref.text, {})[ref.context_id] = ref
            if ref.key not in self.by_key:
                self._tenanted += bool(split_context(ref.context_id)[1])
            self.by_key[ref.key] = ref
            self.index.add(ref.text)

    def catalogue(self, refs: list[ChunkRef]) -> None:
        """Catalog entries whose KV is already stored, and know them here."""
        if not refs:
            return
        self.catalog.add(refs)
        for ref in refs:
            self.remember(ref)

    def refs_for(self, text: str, tenant: str = "") -> list[ChunkRef]:
        """This tenant's refs of this text, the preferred first: context-aware entries, newest first
        (neighbour sets change as a store grows), then the standalone one."""
        refs = [r for r in list(self.refs.get(text, {}).values())[::-1] if split_context(r.context_id)[1] == tenant]
        return sorted(refs, key=lambda r: is_standalone(r.context_id))

    def knows(self, text: str, tenant: str = "") -> bool:
        return bool(self.refs_for(text, tenant))

    def tenant_of(self, key: str) -> str | None:
        ref = self.by_key.get(key)
        return None if ref is None else split_context(ref.context_id)[1]

    def find(self, prompt: str, tenant: str = "") -> list[Match]:
        """The tenant's chunks inside the prompt (another tenant's neither match nor hide one)."""
        with self.lock:
            only_shared = not tenant and self._tenanted == 0
            return self.index.find(prompt, None if only_shared else lambda text: self.knows(text, tenant))

    def drop_row(self, ref: ChunkRef) -> None:
        """A row that lied (its entry names another text): gone from the catalog and from here."""
        self.catalog.drop(ref)
        with self.lock:
            by_context = self.refs.get(ref.text, {})
            if by_context.get(ref.context_id) == ref:
                by_context.pop(ref.context_id)
            if not by_context:
                self.refs.pop(ref.text, None)
                self.index.remove(ref.text)
            if self.by_key.get(ref.key) == ref:
                self.by_key.pop(ref.key)
                self._tenanted -= bool(split_context(ref.context_id)[1])

    def forget(self, keys: list[str], removed: dict[str, ChunkRef]) -> None:
        """These keys are gone; `removed` gains the refs known here."""
        with self.lock:
            for key in keys:
                ref = self.by_key.pop(key, None)
                if ref is None:
                    continue
                removed[key] = ref
                self._tenanted -= bool(split_context(ref.context_id)[1])
                by_context = self.refs.get(ref.text, {})
                by_context.pop(ref.context_id, None)
                if not by_context:
                    self.refs.pop(ref.text, None)
                    self.index.remove(ref.text)

    def __len__(self) -> int:
        return len(self.by_key)
