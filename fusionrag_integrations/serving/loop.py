"""The step loop (nano-vllm's shape): one thread runs schedule -> execute -> update until nothing is
left; callers submit from any thread and read their pieces from a queue.

    plan = scheduler.schedule()         # who lays out, starts, prefills a slice, decodes (data)
    outcome = executor.execute(plan)    # the model work (runtime/executor.py)
    scheduler.update(plan, outcome)     # deliver pieces, finish, requeue, measure

The engine's lock is held for one step at a time, so engine calls that need the model between steps
(the inspection API) interleave; submitting never takes it. The loop is supervised: an error in one
request's work fails that request alone (the executor reports it); an error in the step itself fails
the requests it held with EngineUnavailableError and the loop goes on; repeated step failures stop it
for good (`failure`; new submissions fail at once) so a server reports itself unhealthy instead of
hanging its clients. `stop` lets running requests finish for a while, then fails what is left.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Protocol

from ..errors import EngineUnavailableError
from ..runtime.chores import Chore
from ..runtime.plan import StepOutcome, StepPlan
from ..runtime.state import Request, SeqState, SequenceStream
from .scheduler import Scheduler

log = logging.getLogger(__name__)
CRASH_WINDOW_S, CRASHES_TO_STOP = 60.0, 3  # step failures within the window after which the loop stops


class Executor(Protocol):
    def execute(self, plan: StepPlan) -> StepOutcome: ...


class StepLoop:
    def __init__(self, scheduler: Scheduler, executor: Executor, lock: threading.RLock) -> None:
        self.scheduler, self.executor, self._lock = scheduler, executor, lock
        self._has_work = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._accepting = True
        self.failure: BaseException | None = None  # set when the loop stopped for good
        self.crashes: list[float] = []  # when steps failed (the loop went on after each)

    @property
    def healthy(self) -> bool:
        """False once the loop stopped after repeated failures (or its thread died)."""
        thread = self._thread
        return self.failure is None and (thread is None or thread.is_alive() or self._stopping)

    def submit(self, request: Request) -> SequenceStream:
        return self.submit_choices(request, [])[0]

    def submit_choices(self, request: Request, forks: list[Request]) -> list[SequenceStream]:
        """The request's stream, then one per fork: more answers to the same prompt, decoded from a copy
        of the request's cache once its prefill is done (n > 1 prefills once)."""
        seq = SeqState(request, forks=[SeqState(r) for r in forks])
        if not self._accepting or self.failure is not None:
            why = "is shutting down" if self.failure is None else f"stopped after repeated failures ({self.failure!r})"
            seq.fail(EngineUnavailableError(f"the engine {why}"))
        else:
            self.scheduler.inbox.put(seq)
            self._start()
        return [SequenceStream(s, self.wake) for s in (seq, *seq.forks)]

    def submit_chore(self, steps: Iterator[object]) -> Chore:
        """Run `steps` (each next() one bounded piece of work) on the loop, one piece per step."""
        chore = Chore(steps)
        if not self._accepting or self.failure is not None:
            chore.finish(EngineUnavailableError("the engine is not taking work (shutting down or failed)"))
            return chore
        self.scheduler.chores.append(chore)
        self._start()
        return chore

    def wake(self) -> None:
        self._has_work.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fusionrag-step-loop", daemon=True)
                self._thread.start()
                atexit.register(_stop_at_exit, weakref.ref(self))
        self._has_work.set()

    def step(self) -> None:
        plan = self.scheduler.schedule()
        outcome = self.executor.execute(plan)
        self.scheduler.update(plan, outcome)

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # the loop itself failed (not a step): nothing will serve requests again
            self.failure = exc
            log.exception("the step loop stopped")
        finally:
            self._accepting = False
            self.scheduler.fail_all(_unavailable(self.failure))

    def _serve(self) -> None:
        while not self._stopping:
            try:
                with self._lock:
                    if self._stopping:
                        return
                    self.step()
                    idle = not self.scheduler.busy
            except Exception as exc:  # noqa: BLE001 - supervised: the step's requests fail, the loop goes on
                self._step_failed(exc)
                if self.failure is not None:
                    return
                continue
            if idle:
                self._has_work.clear()
                if not self.scheduler.busy and not self._stopping:
                    self._has_work.wait()  # a submit (or stop) after the clear sets it again
            else:
                time.sleep(0)  # callers waiting on the lock get it between steps

    def _step_failed(self, exc: Exception) -> None:
        """A step raised outside any one request's work: a bug or a device fault. Its requests fail with a
        typed error (their readers never hang); the loop goes on unless this keeps happening."""
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_S] + [now]
        log.error("a step failed; failing its requests", exc_info=exc)
        error = EngineUnavailableError(f"the engine's step failed ({type(exc).__name__}: {exc}); retry the request")
        self.scheduler.fail_requests(error)  # bulk work (chores) goes on at the next step
        if len(self.crashes) >= CRASHES_TO_STOP:
            self.failure = exc

    def stop(self, timeout: float = 30.0, drain: float = 0.0) -> None:
        """Stop taking work; give what was submitted up to `drain` seconds to finish; then end the thread
        after its step in progress, failing what is left with EngineUnavailableError (readers return). Run
        at interpreter exit: a thread still inside a torch op while the runtime tears down aborts it."""
        self._accepting = False
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline and self.scheduler.busy:
            if self._thread is None or not self._thread.is_alive():
                break
            time.sleep(0.05)
        self._stopping = True
        self._has_work.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self.scheduler.fail_all(EngineUnavailableError("the engine is shutting down"))


def _unavailable(failure: BaseException | None) -> EngineUnavailableError:
    if failure is None:
        return EngineUnavailableError("the engine is shutting down")
    return EngineUnavailableError(f"the engine stopped after repeated failures ({failure!r})")


def _stop_at_exit(ref: weakref.ref) -> None:
    loop = ref()
    if loop is not None:
        loop.stop()
