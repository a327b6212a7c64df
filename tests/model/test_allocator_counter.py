"""benchmarks/allocator_counter.py: per-call deltas of the caching allocator's counters, on a scripted sequence."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from allocator_counter import AllocatorCounter  # noqa: E402


def test_counts_are_per_call_deltas(monkeypatch):
    readings = iter(
        [
            {"num_device_alloc": 10, "num_device_free": 4, "num_alloc_retries": 0},  # call 1 before
            {"num_device_alloc": 13, "num_device_free": 5, "num_alloc_retries": 1},  # after: +3 / +1 / +1
            {"num_device_alloc": 20, "num_device_free": 5, "num_alloc_retries": 1},  # call 2 before (work between)
            {"num_device_alloc": 21, "num_device_free": 8, "num_alloc_retries": 1},  # after: +1 / +3 / 0
        ]
    )
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: next(readings))
    counter = AllocatorCounter(torch.device("cuda"))
    for _ in range(2):
        with counter:
            pass
    assert counter.per_call() == {
        "device_allocs": 2.0,
        "device_frees": 2.0,
        "alloc_retries": 0.5,
        "sync_all_streams": 0.0,
    }


def test_cpu_reads_nothing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: 1 / 0)  # never called on a CPU
    counter = AllocatorCounter(torch.device("cpu"))
    with counter:
        pass
    assert counter.per_call() == {
        "device_allocs": 0.0,
        "device_frees": 0.0,
        "alloc_retries": 0.0,
        "sync_all_streams": 0.0,
    }
