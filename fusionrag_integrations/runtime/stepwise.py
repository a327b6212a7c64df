"""A stream that holds the engine's lock only while it computes its next piece, never across a yield.

A generator that yields inside `with lock:` keeps the lock while its consumer does anything
else: a half-read stream blocks every other caller, and a stream advanced from another thread
(`run_in_executor(None, next, gen)`, the usual async pattern) releases a lock its thread does
not own. Here each `next()` takes the engine lock for one step (the prefill, or one decode
token), on whatever thread calls it, and lets it go before handing the piece over. Concurrent
`next()` calls on one stream are serialised by the stream's own lock (always taken first, so
the two locks are never taken in the other order). Requests interleave step by step; each has
its own cache, so their results are the same as one at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class StepwiseStream(Iterator[T], Generic[T]):
    def __init__(self, steps: Iterator[T], engine_lock: threading.RLock) -> None:
        self._steps = steps
        self._engine_lock = engine_lock
        self._lock = threading.Lock()

    def __iter__(self) -> StepwiseStream[T]:
        return self

    def __next__(self) -> T:
        with self._lock, self._engine_lock:
            return next(self._steps)

    def close(self) -> None:
        """Stop early: the request's generator is closed (its cache freed) under the engine lock."""
        with self._lock, self._engine_lock:
            close = getattr(self._steps, "close", None)
            if close is not None:
                close()
