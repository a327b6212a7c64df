"""The controller: from the live shadow samples, the guard threshold and base recompute ratio that
meet a teacher-forced agreement target at the least recompute.

Each shadow sample is a fused answer measured against full attention, with the guard's score for it.
A request the guard escalates is answered by full attention (agreement 1), so for a threshold t the
answers served would agree on average

    served(t) = sum_i w_i (1 if score_i >= t else agreement_i) / sum_i w_i

and t escalates the weighted share of samples scoring at least t. A sample's weight is the inverse of
its chance of being measured; every sampled request is measured, the escalated ones included (their
fused prefill is judged on full attention's answer: shadow.py), so the engine's samples weigh 1 each.

The threshold is the highest whose served agreement's lower confidence bound (one-sided, at
FusionConfig.fidelity_confidence) meets the target: the target holds with that confidence, not only
on average; weighted samples count for less in the bound. Meeting it at rung r costs
r + share x (1 - r) of the chunk tokens (an escalated request recomputes them all). Whether another
rung would cost less is not known until it was tried (on a small model raising the ratio for
everyone bought less than escalating the same recompute's worth of requests), so the controller
searches: it tries the rung up when escalating costs more than that rung's base ratio alone
(share x (1 - r) > r' - r), the rung down when nothing needs escalating and the lower bound of the
unescalated agreement clears the target, and otherwise goes to the rung with the lowest cost it has
measured. Each move starts the rung's evidence afresh; each rung keeps its last threshold and cost.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

RUNGS = (0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
NEVER = 1.01  # a threshold above every probability: escalate nothing


@dataclass(frozen=True)
class ThresholdPlan:
    threshold: float
    served: float  # expected agreement of the answers served under this threshold
    served_low: float  # its lower confidence bound: what the plan holds to the target
    escalated: float  # expected share of requests escalated
    unguarded: float  # expected agreement with no escalation
    unguarded_low: float  # its lower confidence bound


def _low(s1: float, s2: float, total: float, n_eff: float, z: float) -> float:
    """Lower bound (mean - z standard errors) of a weighted mean from its sums (sum w x, sum w x^2, sum w)."""
    mean = s1 / total
    variance = max(s2 / total - mean * mean, 0.0) * n_eff / max(n_eff - 1.0, 1.0)
    return mean - z * math.sqrt(variance / n_eff)


def plan_threshold(
    observations: Sequence[tuple[float, float, float]], target: float, z: float = 1.645
) -> ThresholdPlan:
    """observations: (score, agreement, weight) per measured fused request. The highest threshold whose
    served agreement's lower bound (z = 1.645: one-sided 95%) meets the target (escalating all does)."""
    total = sum(w for _, _, w in observations)
    if not observations or total <= 0:
        raise ValueError("planning needs observations")
    n_eff = total**2 / sum(w * w for _, _, w in observations)  # weighted samples count for less
    s1 = sum(w * a for _, a, w in observations)
    s2 = sum(w * a * a for _, a, w in observations)
    mean, low = s1 / total, _low(s1, s2, total, n_eff, z)
    served, escalated, threshold = low, 0.0, NEVER
    ranked = sorted(observations, key=lambda o: -o[0])
    i = 0
    while served < target and i < len(ranked):
        score = ranked[i][0]
        while i < len(ranked) and ranked[i][0] == score:  # ties escalate together
            _, a, w = ranked[i]
            s1, s2 = s1 + w * (1.0 - a), s2 + w * (1.0 - a * a)  # its answer becomes full attention's: 1
            escalated += w / total
            i += 1
        threshold, served = score, _low(s1, s2, total, n_eff, z) if i < len(ranked) else 1.0
    return ThresholdPlan(threshold, min(s1 / total, 1.0), min(served, 1.0), escalated, mean, low)


class FidelityController:
    """Holds the threshold and base ratio for an engine; `observe` each shadow sample.

    It plans over the last `window` samples at the current rung (older ones describe traffic that may
    have changed) after `min_samples` of them and every `min_samples // 3` after; a rung's measured
    cost is trusted for `memory` plans, then forgotten, so a rung judged worse when traffic was harder
    is tried again once it got easier."""

    def __init__(
        self,
        target: float,
        ratio: float,
        threshold: float,
        bounds: tuple[float, float],
        min_samples: int = 30,
        window: int = 120,
        memory: int = 10,
        z: float = 0.8416,
    ) -> None:
        self.target, self.min_samples, self.memory, self.z = target, min_samples, memory, z
        self.rungs = [r for r in RUNGS if bounds[0] <= r <= bounds[1]] or [min(max(ratio, bounds[0]), bounds[1])]
        self.ratio = min(self.rungs, key=lambda r: abs(r - ratio))
        self.threshold = threshold
        self.plan: ThresholdPlan | None = None
        self.moves = self.plans = 0
        self._costs: dict[float, tuple[float, int]] = {}  # rung -> (recompute share that met the target, plan no.)
        self._thresholds: dict[float, float] = {}
        self._seen: deque[tuple[float, float, float]] = deque(maxlen=window)
        self._since_move = 0
        self._lock = threading.Lock()

    @property
    def costs(self) -> dict[float, float]:
        """The rungs' measured costs still trusted."""
        return {r: c for r, (c, at) in self._costs.items() if self.plans - at < self.memory}

    def observe(self, score: float | None, agreement: float, weight: float, ratio: float) -> None:
        if score is None or abs(ratio - self.ratio) > 1e-9:
            return  # no guard score, or measured at another rung
        with self._lock:
            self._seen.append((score, agreement, weight))
            self._since_move += 1
            if self._since_move >= self.min_samples and self._since_move % max(self.min_samples // 3, 1) == 0:
                self._update()

    def _update(self) -> None:
        plan = plan_threshold(list(self._seen), self.target, self.z)
        self.plans += 1
        self.plan, self.threshold = plan, plan.threshold
        self._thresholds[self.ratio] = plan.threshold
        cost = self.ratio + plan.escalated * (1.0 - self.ratio)
        self._costs[self.ratio] = (cost, self.plans)
        known = self.costs
        at = self.rungs.index(self.ratio)
        up = self.rungs[at + 1] if at + 1 < len(self.rungs) else None
        down = self.rungs[at - 1] if at > 0 else None
        if up is not None and up not in known and cost > up:
            self._move(up)
        elif down is not None and down not in known and plan.escalated == 0.0 and plan.unguarded_low >= self.target:
            self._move(down)
        elif (best := min(known, key=known.__getitem__)) != self.ratio and known[best] < cost:
            self._move(best)

    def _move(self, ratio: float) -> None:
        self.ratio, self._since_move = ratio, 0
        self._seen.clear()
        self.threshold = self._thresholds.get(ratio, self.threshold)
        self.moves += 1
