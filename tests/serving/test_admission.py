"""The step loop, scheduler and executor's bookkeeping on their own (fake requests and model, the real
StepLoop, Scheduler and StepExecutor.execute): memory waits; an out-of-memory start under load goes
back to the queue and is retried only once memory was freed, alone it is the request's typed error;
one request's failure is its own; a failing step fails its requests with a typed error and the loop
goes on until failures repeat; stop drains, then fails what is left; no reader ever hangs."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import torch

from fusionrag_integrations import FusionRAGError
from fusionrag_integrations.config import EngineConfig
from fusionrag_integrations.errors import EngineUnavailableError, OutOfMemoryError
from fusionrag_integrations.fidelity.monitor import FidelityMonitor
from fusionrag_integrations.outputs import GenerationChunk
from fusionrag_integrations.runtime.executor import StepExecutor
from fusionrag_integrations.runtime.state import Phase
from fusionrag_integrations.serving.loop import StepLoop
from fusionrag_integrations.serving.scheduler import Limits, Scheduler


class Job:
    """Stands in for a request: decodes `tokens` tokens; `start` runs when its prefill starts (it may
    raise torch.OutOfMemoryError, wait, ...); fails its own sampling at token `fail_at`."""

    def __init__(self, tokens: int, start=None, fail_at: int | None = None) -> None:
        self.tokens, self.start, self.fail_at = tokens, start, fail_at
        self.shadow = None  # never sampled for a fidelity shadow


class FakeDecode:
    constraint = None  # no grammar

    def __init__(self, job: Job) -> None:
        self.job, self.left, self.count, self.done = job, job.tokens, 0, False

    def start(self) -> list[GenerationChunk]:
        return self._next()

    def feed(self, _row, _masked=None) -> list[GenerationChunk]:
        self.count += 1
        if self.count == self.job.fail_at:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return self._next()

    def _next(self) -> list[GenerationChunk]:
        self.left -= 1
        self.done = self.left <= 0
        return [GenerationChunk("x", [1], "length" if self.done else None)]


class FakeTask:
    remaining, seconds = 10, 0.0

    def run(self, _budget):
        return torch.zeros(1, 4)


class FakeRunner:
    config = EngineConfig(mixed_steps=False)  # a fake prefill has no slice to mix

    def __init__(self) -> None:
        self.forward = lambda states: [None] * len(states)

    def sync(self) -> None:
        pass

    def decode_batch(self, states):
        return self.forward(states)


class FakeExecutor(StepExecutor):
    """The real execute() and its error handling over fake work."""

    def __init__(self) -> None:
        super().__init__(None, FakeRunner(), None, None, Counter(), FidelityMonitor(0.0, "fake", "native", None))

    def lay_out(self, seq) -> None:
        seq.kv_tokens, seq.prefill_tokens, seq.phase = 10, 10, Phase.READY

    def _start(self, seq) -> None:
        if seq.request.start is not None:
            seq.request.start()
        seq.prefill_task = FakeTask()

    def _slice(self, seq, tokens, out):
        return seq, torch.zeros(1, 4)  # the whole prefill in one slice

    def _first_token(self, seq, logits, out) -> None:
        seq.prefill_task, seq.phase, seq.decode_state = None, Phase.DECODE, FakeDecode(seq.request)
        out.pieces[id(seq)] = seq.decode_state.start()


def make_loop(**limits) -> tuple[StepLoop, FakeExecutor]:
    executor = FakeExecutor()
    scheduler = Scheduler(Limits(**{"max_running": 8, "kv_token_budget": 10**6, "prefill_tokens": 10**6, **limits}))
    return StepLoop(scheduler, executor, threading.RLock()), executor


def wait_for(condition, seconds: float = 60.0) -> None:
    """Until condition() holds (a bound on a wait, not a speed: the loop runs a step in microseconds here)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the step loop did not get there"
        time.sleep(0.001)


def oom_while(condition, attempts: list):
    def start():
        attempts.append(1)
        if condition():
            raise torch.OutOfMemoryError("CUDA out of memory (test)")

    return start


def test_out_of_memory_under_load_is_retried_after_a_request_finishes():
    loop, _ = make_loop()
    long_job = Job(10**9)  # runs until the test ends it
    long = loop.submit(long_job)
    next(long)  # the long request runs
    attempts: list = []
    long_runs = lambda: any(s.request is long_job for s in loop.scheduler.running)  # noqa: E731
    late = loop.submit(Job(3, start=oom_while(long_runs, attempts)))  # out of memory while the long one runs
    wait_for(lambda: attempts)
    steps = loop.scheduler.steps
    wait_for(lambda: loop.scheduler.steps >= steps + 20)  # decode steps go by: the late one is not retried
    assert len(attempts) == 1 and loop.scheduler.requeued == 1
    long.close()  # it finishes: its memory is free
    assert len(list(late)) == 3
    assert len(attempts) == 2  # retried once memory was freed, and it fit


def test_out_of_memory_alone_is_a_typed_error():
    loop, _ = make_loop()
    stream = loop.submit(Job(3, start=oom_while(lambda: True, [])))
    with pytest.raises(OutOfMemoryError) as err:
        next(stream)
    assert isinstance(err.value, FusionRAGError) and isinstance(err.value, MemoryError)
    assert len(list(loop.submit(Job(2)))) == 2  # serving goes on


def test_a_request_waits_while_the_device_says_it_does_not_fit():
    running: list = []
    loop, _ = make_loop(fits=lambda kv, prefill: kv <= 10 and not running)  # room for one request (10 positions)
    pieces = []

    def client(n: int) -> None:
        stream = loop.submit(Job(n, start=lambda: running.append(1)))
        pieces.append(len(list(stream)))
        running.pop()

    threads = [threading.Thread(target=client, args=(n,)) for n in (4, 3, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(pieces) == [3, 4, 5] and loop.scheduler.peak_running == 1


def test_stop_ends_the_thread_after_its_step():
    """What runs at interpreter exit: the step in progress finishes, the thread ends."""
    loop, _ = make_loop()
    stream = loop.submit(Job(10**6))
    next(stream)
    loop.stop(timeout=10)
    assert not loop._thread.is_alive()


def test_submit_does_not_wait_for_the_step_in_progress():
    """A server's handlers submit while the loop thread holds the engine lock for a long step."""
    loop, _ = make_loop()
    in_step, release = threading.Event(), threading.Event()
    first = loop.submit(Job(2, start=lambda: (in_step.set(), release.wait(timeout=30))))
    assert in_step.wait(timeout=30)
    submitted = []
    submitter = threading.Thread(target=lambda: submitted.append(loop.submit(Job(3))))
    submitter.start()
    submitter.join(timeout=5)
    assert submitted and loop.scheduler.queued == 1  # returned while the step still runs; waits in the inbox
    release.set()
    assert len(list(first)) == 2 and len(list(submitted[0])) == 3
    assert loop.scheduler.queued == 0


def test_a_request_failing_in_its_own_sampling_fails_alone_and_the_loop_goes_on():
    loop, _ = make_loop()
    healthy = loop.submit(Job(8))
    broken = loop.submit(Job(8, fail_at=3))
    with pytest.raises(RuntimeError, match="probability"):
        list(broken)
    assert len(list(healthy)) == 8
    assert len(list(loop.submit(Job(3)))) == 3  # later requests served
    assert loop.healthy and not loop.crashes


def failing_forward(times: int):
    left = {"n": times}

    def forward(states):  # the batched forward breaks: not any one request's doing
        if left["n"] > 0:
            left["n"] -= 1
            raise RuntimeError("device fault (test)")
        return [None] * len(states)

    return forward


def test_a_failing_step_fails_its_requests_with_a_typed_error_and_the_loop_restarts():
    loop, executor = make_loop()
    executor.runner.forward = failing_forward(1)
    with pytest.raises(EngineUnavailableError, match="device fault"):
        list(loop.submit(Job(5)))
    assert len(list(loop.submit(Job(3)))) == 3
    assert loop.healthy and len(loop.crashes) == 1


def test_repeated_step_failures_stop_the_loop_and_new_requests_fail_at_once():
    loop, executor = make_loop()
    executor.runner.forward = failing_forward(10**6)
    for _ in range(3):
        with pytest.raises(EngineUnavailableError):
            list(loop.submit(Job(5)))
    loop._thread.join(timeout=10)
    assert not loop.healthy and loop.failure is not None
    with pytest.raises(EngineUnavailableError, match="repeated failures"):
        next(loop.submit(Job(2)))


def test_stop_drains_what_runs_then_fails_the_rest_and_no_reader_hangs():
    loop, _ = make_loop(max_running=1)
    short = loop.submit(Job(3))
    endless = loop.submit(Job(10**9))  # waits behind the short one, then never ends
    assert next(short).text == "x"
    loop.stop(timeout=10, drain=0.5)
    assert len(list(short)) == 2  # finished within the drain
    with pytest.raises(EngineUnavailableError, match="shutting down"):
        list(endless)
    with pytest.raises(EngineUnavailableError, match="shutting down"):
        next(loop.submit(Job(2)))


def test_closing_a_stream_wakes_its_blocked_reader():
    """A reader blocked in next() on another thread returns when the stream is closed (a server's
    disconnect), instead of waiting for a token that will not come."""
    loop, _ = make_loop()
    hold = threading.Event()
    stream = loop.submit(Job(3, start=lambda: hold.wait(30)))
    got = []
    reader = threading.Thread(target=lambda: got.append(list(stream)))
    reader.start()
    stream.close()
    reader.join(timeout=10)
    hold.set()
    assert not reader.is_alive() and got == [[]]


def test_a_step_budget_spreads_a_long_prefill_and_tpot_target_narrows_it():
    """The admission policy: the whole prefill budget with nothing decoding; with requests decoding and a
    TPOT target, what fits beside their forward in the target's time (at least a share of that time)."""
    scheduler = Scheduler(Limits(8, 10**6, 4096, tpot_target_ms=40.0))
    assert scheduler.prefill_budget(0) == 4096 and scheduler.prefill_budget(16) == 4096  # nothing measured yet
    scheduler._prefill_ms_per_token, scheduler._decode_ms_per_row = 0.02, 1.5  # 16 rows: a 24 ms forward
    assert scheduler.prefill_budget(16) == 800  # (40 - 24) ms / 0.02 ms a token
    assert scheduler.prefill_budget(30) == 300  # no room left: 15% of the target's time, 6 ms / 0.02 ms
    scheduler._prefill_ms_per_token = 0.035  # a slice over 17K keys: ~1,000 tokens once fitted 35 ms alone
    assert scheduler.prefill_budget(16) == 457  # (40 - 24) / 0.035: the step stays near the target
    assert Scheduler(Limits(8, 10**6, 4096)).prefill_budget(16) == 4096  # no target: the whole budget
