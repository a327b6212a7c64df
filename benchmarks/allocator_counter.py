"""What the CUDA caching allocator did during a benchmark's timed calls: device allocations (cudaMalloc),
frees (cudaFree, which waits for the whole device) and retries (an allocation that failed, freed the
cached blocks and tried again). A timing that moves between processes of the same code while the
work is the same points here when these counts differ: a request whose caches do not fit the blocks
the allocator holds pays for new ones, and a retry stalls the device.

    counter = AllocatorCounter(device)
    with counter:
        ...              # one timed call
    counter.per_call()   # {"device_allocs": 0.0, "device_frees": 0.0, "alloc_retries": 0.0, ...}

On a CPU every count stays 0.
"""

from __future__ import annotations

import torch

STATS = {
    "device_allocs": "num_device_alloc",
    "device_frees": "num_device_free",
    "alloc_retries": "num_alloc_retries",
    "sync_all_streams": "num_sync_all_streams",  # a free of a block other streams used: waits on them all
}


class AllocatorCounter:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.calls = 0
        self.totals = dict.fromkeys(STATS, 0)
        self._before: dict[str, int] = {}

    def _read(self) -> dict[str, int]:
        if self.device.type != "cuda":
            return dict.fromkeys(STATS, 0)
        stats = torch.cuda.memory_stats(self.device)
        return {name: int(stats.get(key, 0)) for name, key in STATS.items()}

    def __enter__(self) -> AllocatorCounter:
        self._before = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        after = self._read()
        self.calls += 1
        for name in STATS:
            self.totals[name] += after[name] - self._before[name]

    def per_call(self) -> dict[str, float]:
        return {name: round(total / max(1, self.calls), 2) for name, total in self.totals.items()}
