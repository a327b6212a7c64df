"""Continuous batching: one thread runs the model for every request; requests join and leave
between steps.

A step admits waiting requests (their prefill, fused or full, and first token) while fewer than
`max_running` run, then runs ONE forward over the next token of every running request (each row
attends to its own cache: model.attention.BatchDecodeAttention). Callers submit from any thread and
read their pieces from a queue; closing a stream cancels its request at the next step. The engine's
lock is held for a step at a time, so precompute and other engine calls interleave between steps;
submitting never takes it (a new request lands in an inbox the next step drains), so a server's
request handlers never wait for a step.

The loop is supervised: an error inside one request's work (its prefill, its sampling) fails that
request alone; an error in the step itself fails the requests it touched with EngineUnavailableError
and the loop goes on; repeated step failures stop it for good (`failure` is set, new submissions
fail at once) so that a server reports itself unhealthy instead of hanging its clients.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..errors import EngineUnavailableError, OutOfMemoryError
from ..outputs import GenerationChunk
from ..request import Request
from ..runtime.decode import DecodeState
from ..runtime.pacing import Pacing
from .chores import Chore

_DONE = object()
log = logging.getLogger(__name__)
CRASH_WINDOW_S, CRASHES_TO_STOP = 60.0, 3  # step failures within the window after which the loop stops


@dataclass
class Sequence:
    """A request inside the scheduler: how to prefill it, then its decode state."""

    request: Request
    plan: Callable[[], tuple[int, int]]  # the layout step, on the scheduler thread: (KV positions, prefill tokens)
    prefill: Callable[[Pacing], DecodeState]  # prefill + first-token setup, on the scheduler thread
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    state: DecodeState | None = None
    kv_tokens: int = 0  # from plan(); 0 until laid out
    prefill_tokens: int = 0
    cancelled: bool = False


class SequenceStream(Iterator[GenerationChunk]):
    """What a caller iterates: pieces as the scheduler produces them; close() cancels."""

    def __init__(self, seq: Sequence, scheduler: Scheduler) -> None:
        self.seq, self.scheduler = seq, scheduler

    def __iter__(self) -> SequenceStream:
        return self

    def __next__(self) -> GenerationChunk:
        item = self.seq.out.get()
        if item is _DONE:
            self.seq.out.put(_DONE)  # later next() calls stop too
            raise StopIteration
        if isinstance(item, BaseException):
            self.seq.out.put(_DONE)
            raise item
        return item

    def close(self) -> None:
        self.seq.cancelled = True
        self.seq.out.put(_DONE)  # a reader blocked in next() (another thread) returns now
        self.scheduler.wake()

    def __del__(self) -> None:
        self.seq.cancelled = True


@dataclass(frozen=True)
class Limits:
    """What the scheduler may run at once (EngineConfig: max_running_requests, running_kv_bytes,
    max_prefill_tokens; `fits` asks the device whether a request's memory is free right now)."""

    max_running: int
    kv_token_budget: int  # KV positions of all running requests together
    prefill_tokens: int  # prompt tokens computed per step; a longer prefill runs in pieces of this size
    fits: Callable[[int, int], bool] = lambda kv_tokens, prefill_tokens: True
    sync: Callable[[], None] = lambda: None  # waits for the device: the time split below stays honest


class Scheduler:
    def __init__(self, lock: threading.RLock, decode_batch, limits: Limits) -> None:
        """decode_batch(states) -> logits [B, V] for each state's (token, position). A waiting request is
        admitted while fewer than max_running run and its KV and activations fit (or nothing runs); a
        step's prefills stay within prefill_tokens (the first always goes, in pieces if it is longer,
        with a decode step of the running requests between pieces)."""
        self.decode_batch, self.limits = decode_batch, limits
        self._lock = lock
        self._inbox: queue.SimpleQueue[Sequence] = queue.SimpleQueue()  # submitted, not yet seen by a step
        self._has_work = threading.Event()
        self._start_lock = threading.Lock()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.chores: deque[Chore] = deque()  # bulk work run a step at a time between the requests' steps
        self.steps = 0  # forwards run, and how many rows they carried (the batching actually achieved)
        self.batched_rows = 0
        self.peak_running = 0
        self.seconds = {"prefill": 0.0, "decode": 0.0}  # where the scheduler thread's time went
        self.requeued = 0  # prefills that ran out of device memory under load and went back to the queue
        self.finished = 0  # requests that left the running set
        self._memory_freed_since: int | None = None  # after a requeue: wait until a request finishes
        self._thread: threading.Thread | None = None
        self._pacing = Pacing(limits.prefill_tokens, self._decode)
        self._stopping = False
        self._accepting = True
        self.failure: BaseException | None = None  # set when the loop stopped for good
        self.crashes: list[float] = []  # when steps failed (the loop went on after each)

    @property
    def healthy(self) -> bool:
        """False once the loop stopped after repeated failures (or its thread died)."""
        thread = self._thread
        return self.failure is None and (thread is None or thread.is_alive() or self._stopping)

    def submit(self, request: Request, plan: Callable[[], tuple[int, int]], prefill: Callable[[Pacing], DecodeState]):
        seq = Sequence(request, plan, prefill)
        if not self._accepting or self.failure is not None:
            why = "is shutting down" if self.failure is None else f"stopped after repeated failures ({self.failure!r})"
            seq.out.put(EngineUnavailableError(f"the engine {why}"))
            return SequenceStream(seq, self)
        self._inbox.put(seq)
        self.submit_started()
        return SequenceStream(seq, self)

    def submit_chore(self, steps) -> Chore:
        """Run `steps` (an iterator; each next() one bounded piece of work) on the loop, between steps."""
        chore = Chore(steps)
        if not self._accepting or self.failure is not None:
            chore.finish(EngineUnavailableError("the engine is not taking work (shutting down or failed)"))
            return chore
        self.chores.append(chore)
        self.submit_started()
        return chore

    def submit_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="fusionrag-scheduler", daemon=True)
                self._thread.start()
                atexit.register(_stop_at_exit, weakref.ref(self))
        self._has_work.set()

    @property
    def queued(self) -> int:
        """Requests submitted and not yet admitted."""
        return len(self.waiting) + self._inbox.qsize()

    def wake(self) -> None:
        self._has_work.set()

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # the loop itself failed (not a step): nothing will serve requests again
            self.failure = exc
            log.exception("the scheduler loop stopped")
        finally:
            self._fail_everything(self.failure or EngineUnavailableError("the engine is shutting down"))

    def _serve(self) -> None:
        while not self._stopping:
            try:
                with self._lock:
                    if self._stopping:
                        return
                    self.step()
                    idle = not (self.waiting or self.running or self.chores)
            except Exception as exc:  # noqa: BLE001 - supervised: the step's requests fail, the loop goes on
                self._step_failed(exc)
                if self.failure is not None:
                    return
                continue
            if idle:
                self._has_work.clear()
                if self._inbox.empty() and not self._stopping:
                    self._has_work.wait()  # a submit (or stop) after the clear sets it again
            else:
                time.sleep(0)  # callers waiting on the lock (precompute) get it between steps

    def _step_failed(self, exc: Exception) -> None:
        """A step raised outside any one request's work: a bug or a device fault. Its requests fail
        with a typed error (their readers never hang); the loop goes on unless this keeps happening."""
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_S] + [now]
        log.error("a scheduler step failed; failing its requests", exc_info=exc)
        error = EngineUnavailableError(f"the engine's step failed ({type(exc).__name__}: {exc}); retry the request")
        for seq in [*self.running, *self.waiting]:
            seq.out.put(error)
        self.finished += len(self.running)
        self.running, self.waiting = [], deque()
        self._memory_freed_since = None
        if len(self.crashes) >= CRASHES_TO_STOP:
            self.failure = exc

    def _fail_everything(self, error: BaseException) -> None:
        """Every request the loop still knows of (and any that arrives later) gets `error`."""
        self._accepting = False
        if not isinstance(error, EngineUnavailableError):
            error = EngineUnavailableError(f"the engine stopped after repeated failures ({error!r})")
        while not self._inbox.empty():
            self.waiting.append(self._inbox.get())
        for seq in [*self.running, *self.waiting]:
            seq.out.put(error)
        self.running, self.waiting = [], deque()
        while self.chores:
            self.chores.popleft().finish(error)

    def stop(self, timeout: float = 30.0, drain: float = 0.0) -> None:
        """Stop taking requests; give those already submitted up to `drain` seconds to finish; then end
        the thread after its step in progress, failing what is left with EngineUnavailableError (their
        readers return). Run at interpreter exit: a scheduler thread still inside a torch op while the
        runtime tears down would abort the process."""
        self._accepting = False
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline and (self.running or self.waiting or self.chores or not self._inbox.empty()):
            if self._thread is None or not self._thread.is_alive():
                break
            time.sleep(0.05)
        self._stopping = True
        self._has_work.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._fail_everything(EngineUnavailableError("the engine is shutting down"))

    def step(self) -> None:
        """Admit what fits, then one batched decode forward, then one step of the oldest chore."""
        while not self._inbox.empty():
            self.waiting.append(self._inbox.get())
        self._drop_cancelled()
        self._admit()
        self._decode()
        if self.chores and self.chores[0].run_one():
            self.chores.popleft()

    def _admit(self) -> None:
        prefilled = 0
        if self._memory_freed_since == self.finished and self.running:
            return  # the last prefill ran out of memory: retrying before anything finished would waste it again
        self._memory_freed_since = None
        while self.waiting and len(self.running) < self.limits.max_running:
            seq = self.waiting[0]
            if self._cancelled(seq):
                self.waiting.popleft()
                continue
            try:
                if not seq.kv_tokens:
                    seq.kv_tokens, seq.prefill_tokens = seq.plan()
                if self.running and not self._fits(seq):
                    break  # first come, first served: it waits for memory, and so do those behind it
                if prefilled and prefilled + seq.prefill_tokens > self.limits.prefill_tokens:
                    break  # the next step admits it: running requests decode a token first
                prefilled += seq.prefill_tokens
                self.waiting.popleft()
                t0, decode_before = time.perf_counter(), self.seconds["decode"]
                seq.state = seq.prefill(self._pacing)
                self._deliver(seq, seq.state.start())
                self.limits.sync()
                spent = time.perf_counter() - t0 - (self.seconds["decode"] - decode_before)  # less paced decodes
                self.seconds["prefill"] += spent
            except torch.OutOfMemoryError:
                if self.running:  # memory frees as running requests finish: it goes first then
                    self.requeued += 1
                    self._memory_freed_since = self.finished
                    self.waiting.appendleft(seq)
                    break
                self._fail(seq, OutOfMemoryError("this request's KV cache and prefill do not fit in device memory"))
                continue
            except Exception as exc:  # noqa: BLE001 - the request's own error, raised in its reader
                self._fail(seq, exc)
                continue
            if not seq.state.done:
                self.running.append(seq)

    def _fits(self, seq: Sequence) -> bool:
        used = sum(s.kv_tokens for s in self.running)
        if used + seq.kv_tokens > self.limits.kv_token_budget:
            return False
        return self.limits.fits(seq.kv_tokens, min(seq.prefill_tokens, self.limits.prefill_tokens))

    def _fail(self, seq: Sequence, exc: BaseException) -> None:
        if self.waiting and self.waiting[0] is seq:
            self.waiting.popleft()
        seq.out.put(exc)

    def _decode(self) -> None:
        """One forward over the next token of every running request (also run between the pieces of a
        long prefill)."""
        self._drop_cancelled()
        if not self.running:
            return
        self.peak_running = max(self.peak_running, len(self.running))
        batch = list(self.running)
        self.limits.sync()  # a paced prefill's last piece is the prefill's time, not this step's
        t0 = time.perf_counter()
        try:
            logits = self.decode_batch([s.state for s in batch])
        except torch.OutOfMemoryError:  # the batch's own size: its requests fail, the loop goes on
            for seq in batch:
                seq.out.put(OutOfMemoryError("the decode step ran out of device memory"))
            self.finished += len(batch)
            self.running = [s for s in self.running if s not in batch]
            return
        self.steps += 1
        self.batched_rows += len(batch)
        failed = []
        for seq, row in zip(batch, logits):
            try:
                self._deliver(seq, seq.state.feed(row))
            except Exception as exc:  # noqa: BLE001 - this request's sampling or detokenising: its own error
                seq.out.put(exc)
                failed.append(seq)
        self.seconds["decode"] += time.perf_counter() - t0  # sampling reads the logits: the step is done
        still = [s for s in self.running if not s.state.done and s not in failed]
        self.finished += len(self.running) - len(still)
        self.running = still

    def _drop_cancelled(self) -> None:
        still = [s for s in self.running if not self._cancelled(s)]
        self.finished += len(self.running) - len(still)  # their memory is free again
        self.running = still

    def _deliver(self, seq: Sequence, pieces: list[GenerationChunk]) -> None:
        for piece in pieces:
            seq.out.put(piece)
        if seq.state.done:
            seq.out.put(_DONE)

    @staticmethod
    def _cancelled(seq: Sequence) -> bool:
        if seq.cancelled:
            seq.out.put(_DONE)
        return seq.cancelled


def _stop_at_exit(ref: weakref.ref) -> None:
    scheduler = ref()
    if scheduler is not None:
        scheduler.stop()
