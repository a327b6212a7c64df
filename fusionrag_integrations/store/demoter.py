"""Demotion off the step loop: the entries the GPU tier evicts (and the CPU tier lacks) are copied down
into pinned host memory by a thread of its own.

Pinning memory is slow (the OS locks it page by page: a 67 MB chunk of an 8B model takes tens of ms),
and an ingest of more chunks than the GPU tier holds evicts one for every chunk it adds: done inline,
the pinned allocations halved ingest throughput. Here the evicting caller only records where the
entry's bytes stand on its stream and hands it over; the entry stays on the GPU, in `pending`, and is
still served from there until its copy lands. At most `max_pending_bytes` wait at once (then the
evicting caller waits): the copies bound the GPU memory they hold, and the throughput only when pinning
is slower than the compute.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import replace

import torch

from .chunk_kv import ChunkKV

log = logging.getLogger(__name__)


class Demoter:
    def __init__(
        self, into: Callable[[ChunkKV], None], lock: threading.RLock, device: torch.device,
        max_pending_bytes: int = 2 << 30,
    ) -> None:  # fmt: skip
        """into(host_entry): called with the store's `lock` held, on the demoter's thread, with each landed copy."""
        self._into, self._lock, self.max_pending_bytes = into, lock, max_pending_bytes
        self.pending: dict[str, ChunkKV] = {}  # evicted from the GPU tier, copy not landed yet (still servable)
        self._queue: queue.SimpleQueue[tuple[ChunkKV, torch.cuda.Event]] = queue.SimpleQueue()
        self._bytes = 0
        self._cond = threading.Condition()
        self._stream = torch.cuda.Stream(device)
        self._thread = threading.Thread(target=self._run, name="fusionrag-demoter", daemon=True)
        self._thread.start()

    def submit(self, entry: ChunkKV) -> bool:
        """Hand an evicted GPU entry over (the caller holds the store's lock); False: too much is on the way
        already, the caller demotes it itself."""
        with self._cond:
            if self._bytes and self._bytes + entry.nbytes > self.max_pending_bytes:
                return False
            self._bytes += entry.nbytes
        written = torch.cuda.Event()
        written.record()  # the entry's bytes as the caller's stream leaves them
        self.pending[entry.key] = entry
        self._queue.put((entry, written))
        return True

    def forget(self, key: str) -> None:
        """A deleted entry (the caller holds the store's lock): its copy is dropped when it lands."""
        self.pending.pop(key, None)

    def flush(self) -> None:
        """Until every submitted copy has landed (tests, and an orderly shutdown)."""
        with self._cond:
            while self._bytes:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            entry, written = self._queue.get()
            host = None
            try:
                with torch.cuda.stream(self._stream):
                    self._stream.wait_event(written)
                    host = entry.to(torch.device("cpu"), pin=True).wait()  # pinned here, off the loop
            except Exception:  # noqa: BLE001 - a failed demotion costs a later recompute or read, nothing more
                log.exception("demoting chunk KV %s to the CPU tier failed", entry.key[:12])
            with self._lock:  # the store's: a lookup sees the entry pending or landed, never neither
                if self.pending.get(entry.key) is entry:
                    if host is not None:
                        self._into(replace(host, ready=None))
                    self.pending.pop(entry.key)
            with self._cond:
                self._bytes -= entry.nbytes
                self._cond.notify_all()
