"""Pinned host buffers, reused, for the device-to-host copies of entries on their way to disk.

Pinning memory is slow (cudaHostAlloc maps and locks every page: tens of ms for a chunk of an 8B
model), and a bulk ingest would otherwise pin a fresh copy of every chunk. A bounded set of slots is
pinned once and reused: the copy engine fills a slot while the GPU computes the next batch, the
writer thread writes it out and gives it back; with every slot in flight the next copy waits, which
is the ingest's backpressure on the compute.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import replace

import torch

from .chunk_kv import ChunkKV

_ALIGN = 64


class PinnedStaging:
    def __init__(self, slots: int = 48) -> None:
        """slots: more than the writer queue holds (4 batches of registry.WRITE_BATCH) plus one batch, so a
        copy that waits for a slot always waits for a batch the writer already has."""
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        self._slots, self._made, self._lock = slots, 0, threading.Lock()

    def copy(self, entry: ChunkKV) -> tuple[ChunkKV, torch.Tensor]:
        """A host copy of a device entry in a slot (landing asynchronously: `ready`), and the slot."""
        tensors = entry.tensors()
        sizes = [t.numel() * t.element_size() for t in tensors.values()]
        need = sum(-(-n // _ALIGN) * _ALIGN for n in sizes)
        slot = self._acquire(need)
        host, offset = {}, 0
        for (name, t), n in zip(tensors.items(), sizes):
            host[name] = slot[offset : offset + n].view(t.dtype).view(t.shape).copy_(t, non_blocking=True)
            offset += -(-n // _ALIGN) * _ALIGN
        ready = torch.cuda.Event()
        ready.record()
        copy = replace(entry, token_ids=host.pop("token_ids"), k=host.pop("k"), v=host.pop("v"), scales=host)
        return replace(copy, ready=ready), slot

    def release(self, slot: torch.Tensor) -> None:
        self._free.put(slot)

    def _acquire(self, need: int) -> torch.Tensor:
        with self._lock:
            try:
                slot = self._free.get_nowait()
            except queue.Empty:
                slot = None
                if self._made < self._slots:
                    self._made += 1
                    return torch.empty(_rounded(need), dtype=torch.uint8, pin_memory=True)
        if slot is None:
            slot = self._free.get()  # every slot is in flight: wait for the writer
        if slot.numel() < need:  # a longer chunk than this slot was made for
            slot = torch.empty(_rounded(need), dtype=torch.uint8, pin_memory=True)
        return slot


def _rounded(n: int) -> int:
    return -(-n // (4 << 20)) * (4 << 20)  # 4 MiB steps: chunks of similar length share slots
