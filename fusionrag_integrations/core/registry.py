"""Which chunk texts have KV, under which keys, and where the KV lives.

One object over three parts: the persistent catalog (text -> keys, shared by processes),
the in-memory detection index (finds those texts inside prompts) and the tiered KV store.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from .catalog import Catalog, ChunkRef
from .chunk_kv import STANDALONE, ChunkKV
from .detect import ChunkIndex, Match
from .store import ChunkStore


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
    ) -> None:
        self.store = ChunkStore(model_fingerprint, device, gpu_bytes, cpu_bytes, directory)
        self.catalog = Catalog(directory / "catalog.sqlite" if directory else None, namespace)
        self.index = ChunkIndex(min_chunk_chars)
        self._refs: dict[str, dict[str, ChunkRef]] = {}  # text -> context_id -> ref
        self._by_key: dict[str, ChunkRef] = {}
        self.reload()

    def reload(self) -> None:
        """Pick up chunks other processes added to the shared catalog."""
        for ref in self.catalog.refs():
            self._remember(ref)

    def _remember(self, ref: ChunkRef) -> None:
        self._refs.setdefault(ref.text, {})[ref.context_id] = ref
        self._by_key[ref.key] = ref
        self.index.add(ref.text)

    def has(self, key: str) -> bool:
        return key in self._by_key and self.store.contains(key)

    def add(self, entries: list[tuple[ChunkKV, str]]) -> None:
        """Store (entry, text) pairs and make their texts detectable."""
        refs = []
        for entry, text in entries:
            self.store.put(entry)
            refs.append(ChunkRef(entry.key, text, entry.context_id, entry.num_tokens))
        self.catalog.add(refs)
        for ref in refs:
            self._remember(ref)

    def register(self, refs: list[ChunkRef]) -> None:
        """Catalog entries whose KV is already on disk (written by another process)."""
        self.catalog.add(refs)
        for ref in refs:
            self._remember(ref)

    def refs_for(self, text: str) -> list[ChunkRef]:
        """Refs of this text, the preferred first: context-aware entries, newest first (neighbour sets
        change as a store grows), then the standalone one."""
        refs = list(self._refs.get(text, {}).values())[::-1]
        return sorted(refs, key=lambda r: r.context_id == STANDALONE)

    def get(self, key: str) -> ChunkKV | None:
        return self.store.get(key)

    def find(self, prompt: str) -> list[Match]:
        return self.index.find(prompt)

    def forget(self, keys: Iterable[str]) -> list[ChunkRef]:
        keys = list(keys)
        self.store.forget(keys)
        removed = self.catalog.remove(keys)
        for key in keys:
            ref = self._by_key.pop(key, None)
            if ref is None:
                continue
            by_context = self._refs.get(ref.text, {})
            by_context.pop(ref.context_id, None)
            if not by_context:
                self._refs.pop(ref.text, None)
                self.index.remove(ref.text)
        return removed

    def __len__(self) -> int:
        return len(self._by_key)
