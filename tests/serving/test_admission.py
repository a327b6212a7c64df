"""Scheduler admission on its own (fake prefills and decode steps, no model): memory waits, an
out-of-memory prefill under load goes back to the queue and is retried only once memory was freed,
and alone it is the request's own typed error."""

from __future__ import annotations

import threading

import pytest
import torch

from fusionrag_integrations import FusionRAGError
from fusionrag_integrations.errors import OutOfMemoryError
from fusionrag_integrations.outputs import GenerationChunk
from fusionrag_integrations.serving.scheduler import Limits, Scheduler


class FakeState:
    """Decodes `n` tokens, one a step."""

    def __init__(self, n: int) -> None:
        self.left, self.done, self.token, self.position = n, False, 0, 0

    def start(self) -> list[GenerationChunk]:
        return self._next()

    def feed(self, _row) -> list[GenerationChunk]:
        return self._next()

    def _next(self) -> list[GenerationChunk]:
        self.left -= 1
        self.done = self.left <= 0
        return [GenerationChunk("x", [1], "length" if self.done else None)]


def scheduler(**limits) -> Scheduler:
    return Scheduler(threading.RLock(), lambda states: [None] * len(states), Limits(**{"max_running": 8,
                     "kv_token_budget": 10**6, "prefill_tokens": 10**6, **limits}))  # fmt: skip


def prefill_failing(times: int, tokens: int, attempts: list):
    def prefill(_pacing):
        attempts.append(1)
        if len(attempts) <= times:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return FakeState(tokens)

    return prefill


def test_out_of_memory_under_load_is_retried_after_a_request_finishes():
    s = scheduler()
    long_state = FakeState(6)
    long = s.submit(None, lambda: (10, 10), lambda _: long_state)
    next(long)  # the long request runs
    attempts: list = []

    def prefill(_pacing):  # out of memory for as long as the long request holds its memory
        attempts.append(1)
        if not long_state.done:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return FakeState(3)

    late = s.submit(None, lambda: (10, 10), prefill)
    assert len(list(late)) == 3
    assert len(list(long)) == 5
    assert s.requeued == 1
    assert len(attempts) == 2  # not retried at every step while the long request still ran


def test_out_of_memory_alone_is_a_typed_error():
    s = scheduler()
    stream = s.submit(None, lambda: (10, 10), prefill_failing(5, 3, []))
    with pytest.raises(OutOfMemoryError) as err:
        next(stream)
    assert isinstance(err.value, FusionRAGError) and isinstance(err.value, MemoryError)
    assert len(list(s.submit(None, lambda: (10, 10), lambda _: FakeState(2)))) == 2  # serving goes on


def test_a_request_waits_while_the_device_says_it_does_not_fit():
    running = []
    s = scheduler(fits=lambda kv, prefill: not running)
    pieces = []

    def client(n: int) -> None:
        stream = s.submit(None, lambda: (10, 10), lambda _: (running.append(1), FakeState(n))[1])
        pieces.append(len(list(stream)))
        running.pop()

    threads = [threading.Thread(target=client, args=(n,)) for n in (4, 3, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(pieces) == [3, 4, 5] and s.peak_running == 1


def test_stop_ends_the_thread_after_its_step():
    """What runs at interpreter exit: the step in progress finishes, the thread ends."""
    s = scheduler()
    stream = s.submit(None, lambda: (10, 10), lambda _: FakeState(10**6))
    next(stream)
    s.stop(timeout=10)
    assert not s._thread.is_alive()


def test_submit_does_not_wait_for_the_step_in_progress():
    """A server's handlers submit while the scheduler thread holds the engine lock for a long step."""
    s = scheduler()
    in_step, release = threading.Event(), threading.Event()

    def slow_prefill(_pacing):
        in_step.set()
        release.wait(timeout=30)
        return FakeState(2)

    first = s.submit(None, lambda: (10, 10), slow_prefill)
    assert in_step.wait(timeout=30)
    submitted = []
    second = lambda: submitted.append(s.submit(None, lambda: (10, 10), lambda _: FakeState(3)))  # noqa: E731
    submitter = threading.Thread(target=second)
    submitter.start()
    submitter.join(timeout=5)
    assert submitted and s.queued == 1  # returned while the step still runs; waits in the inbox
    release.set()
    assert len(list(first)) == 2 and len(list(submitted[0])) == 3
    assert s.queued == 0


# -- supervision: one request's failure is its own; a failing step never leaves a reader hanging ------

from fusionrag_integrations.errors import EngineUnavailableError  # noqa: E402


class FailingState(FakeState):
    """Fails in its own sampling at the `at`-th token (what a NaN distribution did)."""

    def __init__(self, n: int, at: int) -> None:
        super().__init__(n)
        self.at, self.count = at, 0

    def feed(self, row):
        self.count += 1
        if self.count == self.at:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return super().feed(row)


def test_a_request_failing_in_its_own_sampling_fails_alone_and_the_loop_goes_on():
    s = scheduler()
    healthy = s.submit(None, lambda: (10, 10), lambda _: FakeState(8))
    broken = s.submit(None, lambda: (10, 10), lambda _: FailingState(8, at=3))
    with pytest.raises(RuntimeError, match="probability"):
        list(broken)
    assert len(list(healthy)) == 8
    assert len(list(s.submit(None, lambda: (10, 10), lambda _: FakeState(3)))) == 3  # later requests served
    assert s.healthy and not s.crashes


def failing_forward(times: int):
    left = {"n": times}

    def decode_batch(states):  # the batched forward breaks: not any one request's doing
        if left["n"] > 0:
            left["n"] -= 1
            raise RuntimeError("device fault (test)")
        return [None] * len(states)

    return decode_batch


def test_a_failing_step_fails_its_requests_with_a_typed_error_and_the_loop_restarts():
    s = scheduler()
    s.decode_batch = failing_forward(1)
    stream = s.submit(None, lambda: (10, 10), lambda _: FakeState(5))
    with pytest.raises(EngineUnavailableError, match="device fault"):
        list(stream)
    assert len(list(s.submit(None, lambda: (10, 10), lambda _: FakeState(3)))) == 3
    assert s.healthy and len(s.crashes) == 1


def test_repeated_step_failures_stop_the_loop_and_new_requests_fail_at_once():
    s = scheduler()
    s.decode_batch = failing_forward(10**6)
    for _ in range(3):
        with pytest.raises(EngineUnavailableError):
            list(s.submit(None, lambda: (10, 10), lambda _: FakeState(5)))
    s._thread.join(timeout=10)
    assert not s.healthy and s.failure is not None
    with pytest.raises(EngineUnavailableError, match="repeated failures"):
        next(s.submit(None, lambda: (10, 10), lambda _: FakeState(2)))


def test_stop_drains_what_runs_then_fails_the_rest_and_no_reader_hangs():
    s = scheduler(max_running=1)
    short = s.submit(None, lambda: (10, 10), lambda _: FakeState(3))
    endless = s.submit(None, lambda: (10, 10), lambda _: FakeState(10**9))  # waits behind... then never ends
    assert next(short).text == "x"
    s.stop(timeout=10, drain=0.5)
    assert len(list(short)) == 2  # finished within the drain
    with pytest.raises(EngineUnavailableError, match="shutting down"):
        list(endless)
    with pytest.raises(EngineUnavailableError, match="shutting down"):
        next(s.submit(None, lambda: (10, 10), lambda _: FakeState(2)))


def test_closing_a_stream_wakes_its_blocked_reader():
    """A reader blocked in next() on another thread returns when the stream is closed (a server's
    disconnect), instead of waiting for a token that will not come."""
    s = scheduler()
    hold = threading.Event()
    stream = s.submit(None, lambda: (10, 10), lambda _: (hold.wait(30), FakeState(3))[1])
    got = []
    reader = threading.Thread(target=lambda: got.append(list(stream)))
    reader.start()
    stream.close()
    reader.join(timeout=10)
    hold.set()
    assert not reader.is_alive() and got == [[]]
