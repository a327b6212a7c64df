"""The fidelity monitor: decides which fused requests get a shadow, holds the shadows waiting for
spare capacity, runs them a slice at a time when the step loop offers spare tokens, and records
their samples. It runs on the loop's thread; a shadow's failure (out of memory, anything) drops
that one measurement and never touches a user's request."""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist

import torch

from ..config import EngineConfig
from ..model.attention import KVCache
from ..model.transformer import TransformerModel
from ..request import FusionParams
from .calibrated import shipped_predictor
from .controller import NEVER, FidelityController
from .guard import FidelityGuard
from .report import FidelityEstimates, FidelityReport
from .shadow import EscalatedJob, FidelitySample, ShadowCapture, ShadowJob

log = logging.getLogger(__name__)

MAX_PENDING = 32  # shadows waiting; more sampled requests than spare capacity can measure are dropped
DECAY = 0.995  # per busy step: the shadows' share of busy time is measured over the last few hundred steps


class FidelityMonitor:
    def __init__(
        self,
        sample_rate: float,
        model_name: str,
        kv_format: str,
        path: Path | None,
        seed: int | None = None,
        guard: FidelityGuard | None = None,
        guarded_by_default: bool = False,
        max_share: float = 1.0,
    ) -> None:
        self.sample_rate, self.model_name, self.kv_format = sample_rate, model_name, kv_format
        self.max_share = max_share
        self._busy_s = self._shadow_s = 0.0  # decayed sums over steps with users' work in them
        self.guard = guard or FidelityGuard(shipped_predictor(), NEVER, 0.1, seed=seed)  # judges when asked only
        self.guarded_by_default = guarded_by_default
        self.estimates = FidelityEstimates(path)
        self.jobs: deque[ShadowJob | EscalatedJob] = deque()
        self.dropped = 0
        self._random = random.Random(seed)

    def capture(self) -> ShadowCapture | None:
        """A capture for a new request when it is sampled (the executor fills it in), else None."""
        if self.sample_rate <= 0.0 or self._random.random() >= self.sample_rate:
            return None
        return ShadowCapture(self.model_name, self.kv_format)

    def finished(
        self,
        capture: ShadowCapture,
        answer: list[int],
        model: TransformerModel,
        new_cache: Callable[[int], KVCache],
        backend: str,
    ) -> None:
        """The sampled request returned `answer`: queue its shadow (on the loop's thread)."""
        if capture.fused_logits is None or (capture.escalated and capture.full_logits is None):
            return  # nothing was fused (or the full prefill never finished): no shadow
        if len(self.jobs) >= MAX_PENDING:
            self.dropped += 1
            capture.fused_cache = None
            return
        if capture.escalated:
            self.jobs.append(EscalatedJob(capture, answer, model, backend))
        else:
            self.jobs.append(ShadowJob(capture, answer, model, new_cache, backend))

    @classmethod
    def of(cls, config: EngineConfig, model_name: str) -> FidelityMonitor:
        """An engine's monitor: its sample rate, its KV format, its estimate kept in the cache directory."""
        path = config.cache_dir / "fidelity.json" if config.persist else None
        f = config.fusion
        controller = None
        if f.fidelity_target is not None:
            z = NormalDist().inv_cdf(f.fidelity_confidence)
            controller = FidelityController(
                f.fidelity_target, f.recompute_ratio, f.guard_threshold, f.ratio_bounds, z=z
            )
        guard = FidelityGuard(shipped_predictor(), f.guard_threshold, f.guard_explore, controller)
        guarded = f.fidelity == "guarded" or controller is not None
        return cls(
            config.fidelity_sample_rate,
            model_name,
            config.kv_format,
            path,
            guard=guard,
            guarded_by_default=guarded,
            max_share=config.fidelity_max_share,
        )

    def may_run(self, busy: bool) -> bool:
        """Whether a shadow slice may run in this step: always in an idle step (no user's work in it), else
        only while the shadows' share of the recent busy time is under `max_share`."""
        return not busy or self._shadow_s <= self.max_share * self._busy_s

    def account(self, seconds: float, busy: bool) -> None:
        """A shadow slice took `seconds` (in a busy step, that time counts against its share)."""
        if busy:
            self._shadow_s += seconds

    def account_step(self, seconds: float) -> None:
        """A step with users' work took `seconds`, its shadow slice included."""
        self._busy_s = self._busy_s * DECAY + seconds
        self._shadow_s *= DECAY

    def guards(self, fusion: FusionParams) -> bool:
        """Whether the guard judges this request (its own `fidelity`, else the engine's default)."""
        return fusion.fidelity == "guarded" if fusion.fidelity is not None else self.guarded_by_default

    def ratio(self, fusion: FusionParams, configured: float) -> float:
        """The base recompute ratio: the controller's (fidelity_target) unless the request names one."""
        controller = self.guard.controller
        return controller.ratio if controller is not None and fusion.recompute_ratio is None else configured

    @property
    def pending(self) -> int:
        return len(self.jobs)

    def run(self, budget: int) -> None:
        """Spend up to `budget` positions of spare capacity on the oldest shadow (on the loop's thread)."""
        if not self.jobs:
            return
        job = self.jobs[0]
        try:
            sample = job.run(budget)
        except (torch.OutOfMemoryError, RuntimeError) as exc:  # its own memory or numerics: this sample only
            log.warning("a fidelity shadow failed (%s): its sample is dropped", exc)
            self.jobs.popleft()
            self.dropped += 1
            return
        if sample is not None:
            self.jobs.popleft()
            self.record(sample, job.capture)

    def record(self, sample: FidelitySample, capture: ShadowCapture | None = None) -> None:
        if capture is not None and capture.stats is not None:  # first: a reader of the report finds it set
            capture.stats.measured(sample)  # the request's stats object, shared with its caller
        self.estimates.add(sample)
        self.guard.observe(sample)

    def report(self) -> FidelityReport:
        self.estimates.save()
        recent = list(self.estimates.recent)
        return FidelityReport(
            self.sample_rate, self.estimates.estimates(), recent, self.pending, self.dropped, self.guard.to_dict()
        )
