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

import torch

from ..model.attention import KVCache
from ..model.transformer import TransformerModel
from .report import FidelityEstimates, FidelityReport
from .shadow import FidelitySample, ShadowCapture, ShadowJob

log = logging.getLogger(__name__)

MAX_PENDING = 32  # shadows waiting; more sampled requests than spare capacity can measure are dropped


class FidelityMonitor:
    def __init__(
        self, sample_rate: float, model_name: str, kv_format: str, path: Path | None, seed: int | None = None,
    ) -> None:  # fmt: skip
        self.sample_rate, self.model_name, self.kv_format = sample_rate, model_name, kv_format
        self.estimates = FidelityEstimates(path)
        self.jobs: deque[ShadowJob] = deque()
        self.dropped = 0
        self._random = random.Random(seed)

    def capture(self) -> ShadowCapture | None:
        """A capture for a new request when it is sampled (the executor fills it in), else None."""
        if self.sample_rate <= 0.0 or self._random.random() >= self.sample_rate:
            return None
        return ShadowCapture(self.model_name, self.kv_format)

    def finished(
        self, capture: ShadowCapture, answer: list[int], model: TransformerModel,
        new_cache: Callable[[int], KVCache], backend: str,
    ) -> None:  # fmt: skip
        """The sampled request returned `answer`: queue its shadow (on the loop's thread)."""
        if capture.fused_logits is None:
            return  # nothing was fused: no shadow
        if len(self.jobs) >= MAX_PENDING:
            self.dropped += 1
            return
        self.jobs.append(ShadowJob(capture, answer, model, new_cache, backend))

    @classmethod
    def of(cls, config, model_name: str) -> FidelityMonitor:
        """An engine's monitor: its sample rate, its KV format, its estimate kept in the cache directory."""
        path = config.cache_dir / "fidelity.json" if config.persist else None
        return cls(config.fidelity_sample_rate, model_name, config.kv_format, path)

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
            capture.stats.fidelity = sample  # the request's stats object, shared with its caller
        self.estimates.add(sample)

    def report(self) -> FidelityReport:
        self.estimates.save()
        recent = list(self.estimates.recent)
        return FidelityReport(self.sample_rate, self.estimates.estimates(), recent, self.pending, self.dropped)
