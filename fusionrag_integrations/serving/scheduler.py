"""The scheduler: which requests do what in the next step, and the bookkeeping after it. It holds the
requests' states and the limits; it never touches the model (the executor does the work a plan
names) and never calls back into the engine.

Each step (`schedule`):
- requests at the head of the queue are laid out (their chunks' entries found) while slots are free;
- laid-out requests are admitted first come, first served while fewer than `max_running` run, their
  KV fits the token budget and the device says their memory is free (nothing running: always);
- the running prefills get slices of the step's prefill token budget, oldest first;
- every decoding request gets its next token in one batched forward (with the prefill slices, where
  the executor mixes them: EngineConfig.mixed_steps).

The prefill budget is the admission policy that trades time to first token against time per output
token: `max_prefill_tokens` a step, and, with `tpot_target_ms` set and requests decoding, only as many
prefill tokens as fit the target beside the decode forward (both timed by the executor as it runs).
A prompt longer than the budget is prefilled over several steps, the running requests decoding in
between (Sarathi-Serve's chunked prefill).
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..runtime.chores import Chore
from ..runtime.plan import StepOutcome, StepPlan
from ..runtime.state import Phase, SeqState

if TYPE_CHECKING:
    from ..config import EngineConfig


class Capacity(Protocol):
    """What the limits ask of the device's owner (the runner): where it runs, the KV budget, free memory."""

    @property
    def on_gpu(self) -> bool: ...

    def kv_token_budget(self, running_kv_bytes: int | None) -> int: ...

    def memory_fits(self, kv_tokens: int, prefill_tokens: int) -> bool: ...


EMA = 0.2  # weight of the newest measurement in the budget policy's running averages
LOOKAHEAD = 1  # waiting requests laid out beyond the free slots (their chunks found and promoted early)
BESIDE_DECODE = 8  # background work beside decoding requests takes this fraction (1/n) of the prefill budget
# with a TPOT target and the decode forward alone near it, prefills still get this share of the target's time
# (a floor in time, not in tokens: a fixed token floor at 16K cost ~35 ms a step by itself and kept steps
# at 60-70 ms whatever the target)
PREFILL_FLOOR_SHARE = 0.15


@dataclass(frozen=True)
class Limits:
    """What may run at once (EngineConfig: max_running_requests, running_kv_bytes, max_prefill_tokens,
    tpot_target_ms; `fits` asks the device whether a request's memory is free right now)."""

    max_running: int
    kv_token_budget: int  # KV positions of all running requests together
    prefill_tokens: int  # prompt positions computed per step, at most
    tpot_target_ms: float | None = None  # with requests decoding, a step's prefill work fits beside this
    fits: Callable[[int, int], bool] = lambda kv_tokens, prefill_tokens: True

    @classmethod
    def of(cls, config: EngineConfig, runner: Capacity) -> Limits:
        """An engine's limits: its config, with the device's defaults where the config leaves them open."""
        gpu = runner.on_gpu
        running = config.max_running_requests or (64 if gpu else 8)
        prefill = config.max_prefill_tokens or (8192 if gpu else 256)
        budget = runner.kv_token_budget(config.running_kv_bytes)
        return cls(running, budget, prefill, config.tpot_target_ms, runner.memory_fits)


class Scheduler:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.inbox: queue.SimpleQueue[SeqState] = queue.SimpleQueue()  # submitted, not yet seen by a step
        self.waiting: deque[SeqState] = deque()  # WAITING and READY, in arrival order
        self.running: list[SeqState] = []  # PREFILL and DECODE
        self.chores: deque[Chore] = deque()
        self.background = 0  # pieces of background work pending (the executor's fidelity shadows)
        self.steps = self.batched_rows = self.peak_running = 0  # decode forwards and the rows they carried
        self.requeued = self.finished = 0
        self.seconds = {"prefill": 0.0, "decode": 0.0}
        self._prefill_ms_per_token: float | None = None  # running averages, from the executor's timings
        self._decode_ms_per_row: float | None = None
        self._memory_freed_since: int | None = None  # after an out-of-memory start: wait until one finishes

    @property
    def queued(self) -> int:
        """Requests submitted and not yet admitted."""
        return len(self.waiting) + self.inbox.qsize()

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running or self.chores or self.background or not self.inbox.empty())

    # -- the plan --------------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        while not self.inbox.empty():
            self.waiting.append(self.inbox.get())
        self._drop_cancelled()
        plan = StepPlan(decode=[s for s in self.running if s.phase is Phase.DECODE])
        prefilling = [s for s in self.running if s.phase is Phase.PREFILL]
        free = self.limits.max_running - len(self.running)
        heads = list(self.waiting)[: free + LOOKAHEAD]  # laid out ahead: ready (and read in) when a slot frees
        plan.lay_out = [s for s in heads if s.phase is Phase.WAITING]
        plan.admit = self._admissions([s for s in heads[:free] if s.phase is Phase.READY])
        budget = self.prefill_budget(len(plan.decode))
        for seq in prefilling + plan.admit:
            if budget <= 0:
                break
            left = seq.prefill_task.remaining if seq.prefill_task is not None else seq.prefill_tokens
            take = min(max(left, 1), budget)
            plan.prefill.append((seq, take))
            budget -= take
        plan.chore = self.chores[0] if self.chores else None
        if self.background and not self.waiting and not plan.prefill:  # spare capacity: nobody waits for it
            budget = self.prefill_budget(len(plan.decode))  # beside decoding rows, an eighth: their TPOT holds
            plan.spare_tokens = max(budget // BESIDE_DECODE, 1) if plan.decode else budget
        return plan

    def _admissions(self, ready: list[SeqState]) -> list[SeqState]:
        if self._memory_freed_since == self.finished and self.running:
            return []  # the last start ran out of memory: retrying before anything finished would waste it
        self._memory_freed_since = None
        admitted: list[SeqState] = []
        used, this_step = sum(s.kv_tokens for s in self.running), 0
        for seq in ready:
            if seq is not self.waiting[len(admitted)]:
                break  # first come, first served: one not laid out yet holds those behind it
            if self.running or admitted:  # the device is asked for this step's admissions together
                prefill = min(seq.prefill_tokens, self.limits.prefill_tokens)
                over = used + seq.kv_tokens > self.limits.kv_token_budget
                if over or not self.limits.fits(this_step + seq.kv_tokens, prefill):
                    break
            admitted.append(seq)
            used, this_step = used + seq.kv_tokens, this_step + seq.kv_tokens
        for seq in admitted:
            self.waiting.popleft()
            seq.phase = Phase.PREFILL
            self.running.append(seq)
        return admitted

    def prefill_budget(self, decode_rows: int) -> int:
        """Prefill positions this step: the whole budget, or with requests decoding and a TPOT target,
        what fits beside their forward in the target's time, never less than PREFILL_FLOOR_SHARE of that
        time (prefills still finish when the decode forward alone fills the target)."""
        cap, target = self.limits.prefill_tokens, self.limits.tpot_target_ms
        if not decode_rows or target is None or self._prefill_ms_per_token is None:
            return cap
        decode_ms = (self._decode_ms_per_row or 0.0) * decode_rows
        spare_ms = max(target - decode_ms, PREFILL_FLOOR_SHARE * target)
        return max(1, min(cap, int(spare_ms / max(self._prefill_ms_per_token, 1e-6))))

    # -- after the step ----------------------------------------------------------------------------

    def update(self, plan: StepPlan, outcome: StepOutcome) -> None:
        failed = {id(s) for s, _ in outcome.failed}
        for seq, error in outcome.failed:
            seq.fail(error)
        requeued = {id(s) for s in outcome.requeue}
        self.running = [s for s in self.running if id(s) not in requeued]
        for seq in reversed(outcome.requeue):  # out of memory while others run: first in line, once memory frees
            self.requeued += 1
            self._memory_freed_since = self.finished
            seq.phase, seq.prefill_task = Phase.READY, None
            self.waiting.appendleft(seq)
        for seq in plan.lay_out:
            if id(seq) in failed and seq in self.waiting:
                self.waiting.remove(seq)
        self._start_forks()
        for seq in self.running:
            if id(seq) in outcome.pieces:
                seq.deliver(outcome.pieces[id(seq)])
        still = [s for s in self.running if s.phase is not Phase.FINISHED and id(s) not in failed]
        self.finished += len(self.running) - len(still)
        self.running = still
        if plan.chore is not None and plan.chore.finished and self.chores and self.chores[0] is plan.chore:
            self.chores.popleft()
        self.background = outcome.background
        self._measure(outcome)

    def _measure(self, outcome: StepOutcome) -> None:
        decode_s, prefill_s = outcome.decode_s, outcome.prefill_s
        if outcome.mixed:  # one forward did both: the decode rows' share is what they take alone
            decode_s = min(outcome.decode_s, (self._decode_ms_per_row or 0.0) * outcome.decode_rows / 1e3)
            prefill_s = outcome.prefill_s - decode_s
        if outcome.decode_rows:
            self.steps += 1
            self.batched_rows += outcome.decode_rows
            self.peak_running = max(self.peak_running, outcome.decode_rows)
            self.seconds["decode"] += decode_s
            if not outcome.mixed:
                self._decode_ms_per_row = _ema(self._decode_ms_per_row, decode_s * 1e3 / outcome.decode_rows)
        if outcome.prefill_tokens:
            self.seconds["prefill"] += prefill_s
            per_token = prefill_s * 1e3 / outcome.prefill_tokens
            self._prefill_ms_per_token = _ema(self._prefill_ms_per_token, per_token)

    def _drop_cancelled(self) -> None:
        """Cancelled requests leave; one with live forks hands its place (and its prefill) to the first."""
        self.waiting = deque(h for h in map(_live, self.waiting) if h is not None)
        still = [h for h in map(_live, self.running) if h is not None]
        self.finished += len(self.running) - len(still)  # their memory is free again
        self.running = still

    def _start_forks(self) -> None:
        """A request whose prefill just ended started its forks' decoding: they run on their own now, each
        holding its share of the KV room the request reserved."""
        for seq in [s for s in self.running if s.forks and s.phase is Phase.DECODE]:
            share = seq.kv_tokens // (1 + len(seq.forks))
            for fork in seq.forks:
                fork.kv_tokens = share
            self.running += [f for f in seq.forks if f.phase is Phase.DECODE]
            seq.kv_tokens, seq.forks = share, []

    def fail_requests(self, error: BaseException) -> None:
        """Every request it holds gets `error`; it holds none afterwards (chores stay)."""
        while not self.inbox.empty():
            self.waiting.append(self.inbox.get())
        for seq in [*self.running, *self.waiting]:
            seq.fail(error)
        self.finished += len(self.running)
        self.running, self.waiting = [], deque()
        self._memory_freed_since = None

    def fail_all(self, error: BaseException) -> None:
        """Every request and every chore gets `error`."""
        self.fail_requests(error)
        while self.chores:
            self.chores.popleft().finish(error)


def _live(seq: SeqState) -> SeqState | None:
    return seq.hand_over() if seq.cancelled else seq


def _ema(old: float | None, new: float) -> float:
    return new if old is None else (1 - EMA) * old + EMA * new
