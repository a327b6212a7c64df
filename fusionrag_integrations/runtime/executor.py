"""The executor: the model work a step plan names (runtime/plan.py), in order, for the step loop.

Lay out (find each request's chunk entries, computing the missing ones), start the admitted prefills
(cache, placement, selection; QCFuse's layer profiled once as an explicit step), run the prefill
slices, one batched decode forward, a step of bulk work. The fidelity guard may send a fused prefill
back to a full one. Sampling happens here too, so the outcome carries the text pieces. A request whose
own work fails is reported failed (the others go on); out of device memory while others run, it waits.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial

import torch

from ..errors import OutOfMemoryError
from ..fidelity.monitor import FidelityMonitor
from ..fusion.layout import Draft, Layout, PromptLayout
from ..fusion.selectors import Selector, SelectorFactory
from ..inputs import check_length
from ..store.chunk_kv import tenant_of
from .chunk_compute import ChunkCompute
from .decode import Prefill
from .grammar import constrain
from .guarded_prefill import GuardedPrefill
from .packed_step import packed_step
from .plan import StepOutcome, StepPlan
from .prefill_task import PrefillTask
from .runner import ModelRunner
from .state import Phase, Request, SeqState

Slices = list[tuple[SeqState, int]]  # a step's prefill slices: (request, positions to compute)
Finished = tuple[SeqState, torch.Tensor | None]  # a slice's request and its last logits once its prefill ends


class StepExecutor:
    def __init__(
        self,
        layout: PromptLayout,
        runner: ModelRunner,
        chunks: ChunkCompute,
        selectors: SelectorFactory,
        counters: Counter[str],
        fidelity: FidelityMonitor,
    ) -> None:
        self.layout, self.runner, self.chunk_compute, self.selectors = layout, runner, chunks, selectors
        self.counters, self.fidelity = counters, fidelity
        self.guarding = GuardedPrefill(runner, selectors, fidelity)

    def check(self, request: Request) -> None:
        """Fail on the caller's thread, not in the loop: an unknown selector, a grammar that does not compile."""
        self.selectors(request.fusion)
        self.runner.grammars.check(request.sampling)

    def execute(self, plan: StepPlan) -> StepOutcome:
        out, started = StepOutcome(), time.perf_counter()
        for seq in plan.lay_out:
            self._guarded(out, seq, partial(self.lay_out, seq))
        running = bool(plan.decode) or any(s.phase is Phase.PREFILL and s not in plan.admit for s, _ in plan.prefill)
        for seq in plan.admit:
            self._guarded(out, seq, partial(self._start, seq), requeue=running or len(plan.admit) > 1)
        slices = [(s, n) for s, n in plan.prefill if s.prefill_task is not None and s.phase is Phase.PREFILL]
        rows = [s for s in plan.decode if s.phase is Phase.DECODE]
        if not (self._mixes(slices, rows) and self._mixed(slices, rows, out)):
            self._slices(slices, out, running)
            if rows:
                self._decode(rows, out)
        if plan.chore is not None:
            plan.chore.run_one()
        busy = bool(plan.decode or plan.prefill)  # users' work in this step: the shadows' share is bounded
        if plan.spare_tokens and self.fidelity.pending and self.fidelity.may_run(busy):
            t0 = time.perf_counter()
            self.fidelity.run(plan.spare_tokens)
            self.runner.sync()  # its own time, measured: the decode rows were read already
            self.fidelity.account(time.perf_counter() - t0, busy)
        if busy:
            self.fidelity.account_step(time.perf_counter() - started)
        out.background = self.fidelity.pending
        return out

    def _slices(self, slices: Slices, out: StepOutcome, running: bool) -> None:
        """The step's prefill slices, one forward each (a request's error or lack of memory is its own)."""
        t0 = time.perf_counter()
        finished: list[Finished] = []
        for seq, tokens in slices:
            work = lambda s=seq, n=tokens: finished.append(self._slice(s, n, out))  # noqa: E731
            self._guarded(out, seq, work, requeue=running)
        if slices:
            self.runner.sync()  # one sync for the step's slices: each is timed from the step's start to here
            out.prefill_s = time.perf_counter() - t0
            self._first_tokens(slices, finished, out.prefill_s, out)

    def _mixes(self, slices: Slices, rows: list[SeqState]) -> bool:
        if not self.runner.config.mixed_steps or not slices or (not rows and len(slices) == 1):
            return False
        return all(seq.prefilling.sliceable for seq, _ in slices)

    def _mixed(self, slices: Slices, rows: list[SeqState], out: StepOutcome) -> bool:
        """The step's slices and decode rows in one forward (runtime/packed_step.py); False when it failed
        (out of memory, or a request's own error): nothing changed, the caller runs the parts apart."""
        t0, done = time.perf_counter(), sum(seq.prefilling.done for seq, _ in slices)
        try:
            tasks, states = [(s.prefilling, n) for s, n in slices], [s.decoding for s in rows]
            result = packed_step(self.runner.model, tasks, states, self.runner.backend)
            self.runner.sync()
        except Exception:  # noqa: BLE001 - each part again on its own, its error its own
            self.counters["mixed_step_fallbacks"] += 1
            return False
        out.mixed, out.prefill_s = True, time.perf_counter() - t0
        self.counters["mixed_steps"] += 1
        out.prefill_tokens += sum(seq.prefilling.done for seq, _ in slices) - done
        self._first_tokens(slices, list(zip([s for s, _ in slices], result.first_logits)), out.prefill_s, out)
        if rows:
            assert result.decode_logits is not None  # rows were decoded
            self._sample(rows, result.decode_logits, out)
            out.decode_rows, out.decode_s = len(rows), out.prefill_s
        return True

    def _first_tokens(self, slices: Slices, finished: Sequence[Finished], seconds: float, out: StepOutcome) -> None:
        for seq, _ in slices:
            if seq.prefill_task is not None:
                seq.prefill_task.seconds += seconds
        for seq, logits in finished:
            if logits is not None:
                self._guarded(out, seq, partial(self._first_token, seq, logits, out))

    @staticmethod
    def _guarded(out: StepOutcome, seq: SeqState, work: Callable[[], object], requeue: bool = False) -> None:
        try:
            work()
        except torch.OutOfMemoryError:
            if requeue:  # memory frees as running requests finish: it goes first then
                seq.prefill_task = None
                out.requeue.append(seq)
            else:
                out.failed.append(
                    (seq, OutOfMemoryError("this request's KV cache and prefill do not fit in device memory"))
                )
        except Exception as exc:  # noqa: BLE001 - the request's own error, raised in its reader
            out.failed.append((seq, exc))

    # -- phases ----------------------------------------------------------------------------------

    def lay_out(self, seq: SeqState) -> None:
        """WAITING -> READY: chunk entries found (missing ones computed and stored), sizes known."""
        request = seq.request
        layout = self.layout_of(request)
        n, n_chunk = len(layout.token_ids), sum(c.entry.num_tokens for c in layout.chunks)
        check_length(n, request.sampling.max_new_tokens, self.layout.context_window)
        selector, ratio = self.selection(request)
        share = ratio if selector.fixed_share is None else selector.fixed_share
        seq.layout = layout  # its forks (more answers) each hold a copy of its cache: their room is reserved too
        seq.kv_tokens = (n + request.sampling.max_new_tokens) * (1 + len(seq.forks))
        seq.prefill_tokens = n - n_chunk + round(share * n_chunk)
        seq.phase = Phase.READY

    def layout_of(self, request: Request) -> Layout:
        draft, request.draft = request.draft if request.draft is not None else prepare(self.layout, request), None
        computed = {e.text for e in self.chunk_compute.compute(self.layout.missing(draft))}
        for _ in range(3):  # an entry found missing while building (evicted meanwhile): compute it, build again
            layout, jobs = self.layout.build(draft, request.stats, computed)
            if layout is not None:
                return layout
            computed |= {e.text for e in self.chunk_compute.compute(jobs)}
        raise RuntimeError("chunk entries were evicted as fast as they were computed: the memory tiers are too small")

    def _start(self, seq: SeqState) -> None:
        """READY -> PREFILL: the cache allocated, chunks placed, tokens selected."""
        t0 = time.perf_counter()
        seq.prefill_task = self.start_prefill(seq.request, seq.laid_out)
        seq.prefill_task.seconds += time.perf_counter() - t0  # launched here, finished by its first slice's sync

    def start_prefill(self, request: Request, layout: Layout) -> PrefillTask:
        if layout.chunks and self.selectors.needs_profile(request.fusion):
            self.runner.profile_critical_layer(layout)  # an explicit step, once per model and cache directory
        selector, ratio = self.selection(request)  # fully configured
        return self.runner.start_prefill(layout, selector, ratio, request.sampling.max_new_tokens)

    def selection(self, request: Request) -> tuple[Selector, float]:
        selector, ratio = self.selectors(request.fusion)
        return selector, self.fidelity.ratio(request.fusion, ratio)

    def prefill_now(self, request: Request) -> Prefill:
        """A whole prefill at once, outside the loop (the inspection API; the caller holds the engine lock)."""
        layout = self.layout_of(request)
        t0 = time.perf_counter()
        task = self.start_prefill(request, layout)
        logits = task.run(task.remaining)
        assert logits is not None  # every position ran
        self.runner.sync()
        task.seconds = time.perf_counter() - t0
        return self.finish_prefill(task, request, logits)

    def _slice(self, seq: SeqState, tokens: int, out: StepOutcome) -> tuple[SeqState, torch.Tensor | None]:
        task = seq.prefilling
        before = task.done
        logits = task.run(tokens)
        out.prefill_tokens += task.done - before
        return seq, logits

    def _first_token(self, seq: SeqState, logits: torch.Tensor, out: StepOutcome) -> None:
        """PREFILL -> DECODE: the stats, the decode state, the first token (or, escalated by the guard,
        back to a full prefill)."""
        request = seq.request
        if self.guarding.escalated(seq, logits):
            return
        task = seq.prefilling
        pre = self.finish_prefill(task, request, logits)
        if request.shadow is not None and not request.shadow.take_prefill(
            pre.logits, pre.token_ids, task.layout, pre.stats
        ):
            request.shadow = None  # nothing was fused: nothing to measure
        seq.prefill_task, seq.layout, seq.phase = None, None, Phase.DECODE  # a tier may evict the chunks now
        seq.decode_state = self.runner.decode_state(pre, request)
        out.pieces[id(seq)] = seq.decode_state.start()
        for fork in (f for f in seq.forks if not f.cancelled):  # more answers: from a copy of this cache
            self._guarded(out, fork, partial(self._fork, fork, pre, out))
        if request.shadow is not None:
            self.guarding.finished(seq)

    def _fork(self, fork: SeqState, pre: Prefill, out: StepOutcome) -> None:
        fork.decode_state, fork.phase = self.runner.fork_decode(pre, fork.request), Phase.DECODE
        out.pieces[id(fork)] = fork.decode_state.start()

    def finish_prefill(self, task: PrefillTask, request: Request, logits: torch.Tensor) -> Prefill:
        pre = self.runner.finish_prefill(task, request, logits)
        if task.layout.learnable:  # after the timing: storing is not on the path to the first token
            entries = self.layout.learned_entries(task.layout, task.cache.k, task.cache.v)
            self.chunk_compute.registry.add(entries)
            self.counters["chunks_learned"] += len(entries)
        return pre

    def _decode(self, rows: list[SeqState], out: StepOutcome) -> None:
        t0 = time.perf_counter()
        try:
            logits = self.runner.decode_batch([s.decoding for s in rows])
        except torch.OutOfMemoryError:  # the batch's own size: its requests fail, the loop goes on
            out.failed += [(s, OutOfMemoryError("the decode step ran out of device memory")) for s in rows]
            return
        self._sample(rows, logits, out)
        out.decode_rows, out.decode_s = len(rows), time.perf_counter() - t0  # sampling read the logits: done

    def _sample(self, rows: list[SeqState], logits: torch.Tensor, out: StepOutcome) -> None:
        """Each decode row's next token from its logits row (the grammar rows masked together)."""
        constraints = [s.decoding.constraint for s in rows]
        masked = constrain(logits, constraints) if any(constraints) else [None] * len(rows)
        for seq, row, masked_row in zip(rows, logits, masked):
            try:
                out.pieces[id(seq)] = seq.decoding.feed(row, masked_row)
            except Exception as exc:  # noqa: BLE001 - this request's sampling or detokenising: its own error
                out.failed.append((seq, exc))
            if seq.request.shadow is not None:
                self.guarding.finished(seq)


def prepare(layout: PromptLayout, request: Request) -> Draft:
    """The request's prompt prepared for layout (on the caller's thread where there is one)."""
    fusion = request.fusion
    learn = layout.learn_default if fusion.learn_chunks is None else fusion.learn_chunks
    return layout.prepare(request.prompt, request.tools, fusion.chunks, learn, tenant_of(fusion.cache_salt))
