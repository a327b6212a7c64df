"""Ingest: computed chunk entries into the registry batch by batch, and a writer thread that persists
them while the next batch computes.

The pipeline of a bulk precompute: the GPU computes batch i+1 while the copy engine moves batch i
(in its stored format) into pinned host memory and the writer thread checksums and writes batch i-1
to disk and catalogues it. The writer's queue is bounded, so a slow disk slows the compute down
instead of filling host memory. `flush()` returns once everything submitted is on disk and in the
catalog (precompute calls it before returning: what it returns is persisted).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from tqdm.auto import tqdm

from .chunk_kv import ChunkKV

log = logging.getLogger(__name__)


def ingest(
    batches: Iterable[list[tuple[ChunkKV, str]]], total: int, add: Callable, show: bool | None
) -> Iterator[list[ChunkKV]]:
    """Store each batch of (entry, text) as it is computed (`add`: the registry's) and yield its entries:
    one batch per step, so the step loop can run requests between batches. show: progress True / False,
    or None = when there are many and stderr is a terminal."""
    hide = (not show) if show is not None else (total < 16 or None)
    with tqdm(total=total, desc="precompute", unit="chunk", disable=hide) as progress:
        for entries in batches:
            add(entries)
            progress.update(len(entries))
            yield [entry for entry, _ in entries]


class Writer:
    """Runs `write(batch)` for each submitted batch on one background thread, in order."""

    def __init__(self, write: Callable[[list], None], depth: int = 4) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self.failures = 0
        self.seconds = {"writing": 0.0, "waiting": 0.0}  # writer busy; submitters blocked on a full queue

    def submit(self, batch: list) -> None:
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fusionrag-kv-writer", daemon=True)
                self._thread.start()
        t0 = time.perf_counter()
        self._queue.put(batch)  # waits while `depth` batches are queued: backpressure on the compute
        self.seconds["waiting"] += time.perf_counter() - t0

    def flush(self) -> None:
        """Wait until every submitted batch is written (or failed)."""
        if self._thread is not None:
            self._queue.join()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            t0 = time.perf_counter()
            try:
                self._write(batch)
            except Exception:  # noqa: BLE001 - a failed write costs reuse in later processes, not the caller
                self.failures += 1
                log.exception("writing chunk KV failed; kept in memory only")
            finally:
                self.seconds["writing"] += time.perf_counter() - t0
                self._queue.task_done()
