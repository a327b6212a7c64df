"""Chunk KV computed on the step loop: the chunks a prompt lacks (at lay-out), and a bulk ingest a batch
per step (a chore), each batch stored as it comes and timed for the fetch-or-recompute choice."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

from ..store.chunk_kv import ChunkKV
from ..store.ingest import ingest
from ..store.registry import ChunkRegistry
from .precompute import PrecomputeJob
from .runner import ModelRunner


class ChunkCompute:
    def __init__(self, runner: ModelRunner, registry: ChunkRegistry, prefix_ids: list[int], counters: Counter[str]):
        self.runner, self.registry, self.prefix_ids, self.counters = runner, registry, prefix_ids, counters

    def compute(self, jobs: list[PrecomputeJob]) -> list[ChunkKV]:
        """Compute, store and return these jobs' entries now (chunks a prompt lacks)."""
        done: list[ChunkKV] = []
        if jobs:
            for entries in self.ingest_steps(jobs, False):
                done += entries
        return done

    def ingest_steps(self, jobs: list[PrecomputeJob], show_progress: bool | None) -> Iterator[list[ChunkKV]]:
        """A batch of chunk compute per next(): what a bulk precompute runs on the loop, a step at a time
        (each batch timed: the fetch-or-recompute choice compares it with the backend's reads)."""
        memory_only = {j.key for j in jobs if not j.persist}
        tokens = {j.key: len(j.context_ids) + len(j.token_ids) for j in jobs}
        clock = [time.perf_counter()]

        def store(entries: list[tuple[ChunkKV, str]]) -> None:  # no device sync: over batches the gaps add up
            now = time.perf_counter()
            self.registry.store.cost.computed(sum(tokens[e.key] for e, _ in entries), now - clock[0])
            self.registry.add([p for p in entries if p[0].key not in memory_only])
            self.registry.add([p for p in entries if p[0].key in memory_only], persist=False)
            self.counters["chunks_computed"] += len(entries)
            clock[0] = time.perf_counter()

        return ingest(self.runner.compute_chunks(self.prefix_ids, jobs), len(jobs), store, show_progress)
