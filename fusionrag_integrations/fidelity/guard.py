"""The per-request guard: when the predictor says a fused answer will likely drift from full
attention, that request is prefilled again in full before its first token goes out.

Its score is P(diverged) from the prefill's signals (signals.py, predictor.py); at or above the
threshold the request escalates. A sampled request (one the shadow will measure) is measured either
way: escalated, its fused prefill is judged on full attention's answer (shadow.py). A flagged sampled
request is still answered fused with probability `explore`, so some of the requests the guard flags
are judged on their own fused answers too, the figure the escalated ones stand in for. The guard
refits its predictor on the engine's own samples as they come in.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from dataclasses import dataclass

from .controller import FidelityController
from .predictor import DivergencePredictor, fit_predictor
from .shadow import FidelitySample

log = logging.getLogger(__name__)

REFIT_AFTER = 100  # own samples before the first refit: fewer leave the shipped calibration in charge
REFIT_EVERY = 50
KEEP = 2000  # samples kept for refits


@dataclass(frozen=True)
class GuardDecision:
    score: float  # P(diverged)
    escalate: bool
    weight: float  # 1 / the chance that a sampled request like this one is measured (see controller.py)


class FidelityGuard:
    def __init__(
        self,
        predictor: DivergencePredictor,
        threshold: float,
        explore: float,
        controller: FidelityController | None = None,
        seed: int | None = None,
    ) -> None:
        self.predictor, self._threshold, self.explore, self.controller = predictor, threshold, explore, controller
        self.guarded = self.escalated = self.explored = 0
        self._samples: deque[FidelitySample] = deque(maxlen=KEEP)
        self._seen = 0  # samples with signals so far (the refit schedule; the deque stops growing at KEEP)
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    @property
    def threshold(self) -> float:
        return self.controller.threshold if self.controller is not None else self._threshold

    def decide(self, signals: dict[str, float], sampled: bool) -> GuardDecision:
        score = self.predictor.score(signals)
        flagged = score >= self.threshold
        explore = flagged and sampled and self._random.random() < self.explore
        with self._lock:
            self.guarded += 1
            self.escalated += flagged and not explore
            self.explored += explore
        return GuardDecision(score, flagged and not explore, 1.0)  # escalated or not, a sampled request is measured

    def observe(self, sample: FidelitySample) -> None:
        """A shadow sample came in: the controller's evidence, and the refit's."""
        if self.controller is not None:
            self.controller.observe(sample.score, sample.agreement, sample.weight, sample.ratio)
        if not sample.signals:
            return
        with self._lock:
            self._samples.append(sample)
            self._seen += 1
            due = self._seen >= REFIT_AFTER and self._seen % REFIT_EVERY == 0
            samples = list(self._samples) if due else []
        if samples:
            self.refit(samples)

    def refit(self, samples: list[FidelitySample]) -> None:
        try:
            self.predictor = fit_predictor(
                [s.signals for s in samples],
                [s.agreement for s in samples],
                self.predictor.label,
                "this engine's shadow samples",
                [s.weight for s in samples],
            )
        except ValueError:  # one outcome only so far: keep the current fit
            log.debug("guard refit skipped: the samples hold one outcome")

    def to_dict(self) -> dict:
        c = self.controller
        return {
            "threshold": self.threshold,
            "explore": self.explore,
            "guarded": self.guarded,
            "escalated": self.escalated,
            "explored": self.explored,
            "predictor": self.predictor.to_dict(),
            "target": c.target if c else None,
            "ratio": c.ratio if c else None,
            "ratio_moves": c.moves if c else 0,
            "plan": vars(c.plan) if c and c.plan else None,
        }
