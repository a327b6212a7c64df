"""Ingest: computed chunk entries into the registry, batch by batch, with a progress bar on bulk adds."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm.auto import tqdm

from .chunk_kv import ChunkKV
from .registry import ChunkRegistry


def ingest(batches: Iterable[list[tuple[ChunkKV, str]]], total: int, registry: ChunkRegistry, show: bool | None):
    """Store each batch of (entry, text) as it is computed; returns the entries in that order.
    show: True / False, or None = when there are many and stderr is a terminal."""
    done: list[ChunkKV] = []
    hide = (not show) if show is not None else (total < 16 or None)
    with tqdm(total=total, desc="precompute", unit="chunk", disable=hide) as progress:
        for entries in batches:
            registry.add(entries)
            progress.update(len(entries))
            done += [entry for entry, _ in entries]
    return done
