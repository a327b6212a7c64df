"""The fidelity guard's part in the step loop: judge a finished fused prefill, and hand finished sampled
requests to the fidelity shadow.

Kept apart from the executor because it is one decision with its own inputs (the guard's signals, the
shadow's sampling) and one consequence (a full prefill of the same request, in its own cache or, when the
shadow samples the request, in a new one so the fused answer can be judged against full attention's).
"""

from __future__ import annotations

import torch

from ..fidelity.monitor import FidelityMonitor
from ..fidelity.signals import guard_signals
from ..fusion.selectors import SelectorFactory
from ..model.attention import KVCache
from ..request import FusionParams
from .prefill_task import PrefillTask
from .runner import ModelRunner
from .state import Request, SeqState


class GuardedPrefill:
    """The guard's decision on a fused prefill and the shadow's hand-off of a finished answer."""

    def __init__(self, runner: ModelRunner, selectors: SelectorFactory, fidelity: FidelityMonitor) -> None:
        self.runner, self.selectors, self.fidelity = runner, selectors, fidelity

    def escalated(self, seq: SeqState, logits: torch.Tensor) -> bool:
        """The fidelity guard on a finished fused prefill (guarded or sampled requests: the shadow keeps the
        signals): True when it starts a full prefill of the request instead (in the same cache, or in a new
        one when the shadow samples the request: `_keep_fused`)."""
        task, request = seq.prefilling, seq.request
        guarded = self.fidelity.guards(request.fusion)
        if task.ctx is None or task.selected is None or (not guarded and request.shadow is None):
            return False
        recomputed = int(task.selected.numel())
        if recomputed >= task.n_chunk:
            return False  # nothing reused: already full attention
        signals = guard_signals(task.ctx, logits[-1], recomputed, task.n_chunk)
        if request.shadow is not None:
            request.shadow.signals = signals
        if not guarded:
            return False
        decision = self.fidelity.guard.decide(signals, sampled=request.shadow is not None)
        request.stats.guard_decided(decision.score, decision.escalate)
        if request.shadow is not None:
            request.shadow.score, request.shadow.weight = decision.score, decision.weight
        if not decision.escalate:
            return False
        full, _ = self.selectors(FusionParams(selector="full"))
        cache = self._keep_fused(request, task, logits[-1], recomputed)
        restart = self.runner.start_prefill(task.layout, full, 1.0, request.sampling.max_new_tokens, cache)
        restart.seconds, seq.prefill_task = task.seconds, restart
        return True

    def _keep_fused(self, request: Request, task: PrefillTask, logits: torch.Tensor, recomputed: int) -> KVCache:
        """The cache an escalated request's full prefill runs in: the fused one's own, unless the shadow
        samples the request; then a new one, and the fused prefill stays to be judged on full's answer."""
        shadow = request.shadow
        if shadow is None:
            return task.cache
        try:
            cache = self.runner.new_cache(task.cache.capacity)
        except torch.OutOfMemoryError:  # no room for both: answer in place, measure nothing
            request.shadow = None
            return task.cache
        shadow.escalate(logits, task.cache, task.layout, task.selector_name, task.ratio, recomputed / task.n_chunk)
        return cache

    def finished(self, seq: SeqState) -> None:
        """A sampled request that just returned its answer: its fidelity shadow is queued."""
        shadow, decoding, r = seq.request.shadow, seq.decoding, self.runner
        if shadow is not None and decoding.done:
            self.fidelity.finished(shadow, decoding.generated, r.model, r.new_cache, r.backend)
            seq.request.shadow = None
