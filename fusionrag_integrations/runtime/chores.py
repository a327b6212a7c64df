"""Chores: work on the step loop that is not a request (a bulk precompute), run one bounded step at a
time between the requests' steps. Ingesting 40 passages then delays a running stream by one batch of
chunk compute per token at most, instead of holding the model for the whole ingest."""

from __future__ import annotations

import threading
from collections.abc import Iterator


class Chore:
    def __init__(self, steps: Iterator[object]) -> None:
        self.steps = steps
        self.error: BaseException | None = None
        self._done = threading.Event()

    def run_one(self) -> bool:
        """One step (on the loop's thread, the engine's lock held); True once finished or failed."""
        try:
            next(self.steps)
            return False
        except StopIteration:
            self.finish()
        except Exception as exc:  # noqa: BLE001 - the chore's own error, raised in its waiter
            self.finish(exc)
        return True

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self._done.set()

    def wait(self) -> None:
        """Until every step ran; raises the error a step raised (or why the loop could not run it)."""
        self._done.wait()
        if self.error is not None:
            raise self.error
