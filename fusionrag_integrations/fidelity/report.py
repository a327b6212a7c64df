"""Rolling fidelity estimates per configuration (model, selector, ratio, KV format, precompute mode):
mean and 95% confidence interval of each figure, the histogram buckets /metrics exports, and the
recent samples; kept in the cache directory (fidelity.json) so a restart keeps the estimate."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .shadow import FidelitySample

FIGURES = ("kl", "top1", "agreement")
KL_BUCKETS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # nats
AGREEMENT_BUCKETS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0)
RECENT = 256  # samples kept for fidelity_report().samples
FORMAT = 1


@dataclass(frozen=True)
class Estimate:
    """A figure's mean over n samples with its 95% confidence interval (normal approximation; None below 2)."""

    mean: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class FidelityEstimate:
    model: str
    selector: str
    ratio: float
    kv_format: str
    precompute: str
    n: int
    kl: Estimate
    top1: Estimate
    agreement: Estimate
    recompute_share: float  # mean share of chunk tokens recomputed
    kl_buckets: list[int]  # samples per KL_BUCKETS bound (<=), the last one above them all
    agreement_buckets: list[int]  # samples per AGREEMENT_BUCKETS bound (<=), the last one above them all


@dataclass(frozen=True)
class FidelityReport:
    sample_rate: float
    estimates: list[FidelityEstimate]
    samples: list[FidelitySample]  # the most recent, oldest first
    pending: int = 0  # shadows waiting for spare capacity
    dropped: int = 0  # sampled requests not measured (queue full, or the shadow failed)
    guard: dict | None = None  # the guard: threshold, counts, predictor, the controller's target, ratio and plan

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Group:
    n: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FIGURES, 0.0))
    squares: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FIGURES, 0.0))
    share: float = 0.0
    kl_buckets: list[int] = field(default_factory=lambda: [0] * (len(KL_BUCKETS) + 1))
    agreement_buckets: list[int] = field(default_factory=lambda: [0] * (len(AGREEMENT_BUCKETS) + 1))

    def add(self, s: FidelitySample) -> None:
        self.n += 1
        self.share += s.recompute_share
        for name in FIGURES:
            value = getattr(s, name)
            self.sums[name] += value
            self.squares[name] += value * value
        self.kl_buckets[_bucket(s.kl, KL_BUCKETS)] += 1
        self.agreement_buckets[_bucket(s.agreement, AGREEMENT_BUCKETS)] += 1

    def estimate(self, name: str) -> Estimate:
        mean = self.sums[name] / self.n
        if self.n < 2:
            return Estimate(mean, None, None)
        variance = max(self.squares[name] - self.n * mean * mean, 0.0) / (self.n - 1)
        half = 1.96 * math.sqrt(variance / self.n)
        low, high = mean - half, mean + half
        if name != "kl":  # shares: inside [0, 1]
            low, high = max(low, 0.0), min(high, 1.0)
        return Estimate(mean, max(low, 0.0), high)


def _bucket(value: float, bounds: tuple[float, ...]) -> int:
    return next((i for i, b in enumerate(bounds) if value <= b), len(bounds))


class FidelityEstimates:
    """Thread-safe aggregation of samples; persisted to `path` (None: in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self._lock = path, threading.Lock()
        self.groups: dict[tuple[str, str, float, str, str], _Group] = {}
        self.recent: deque[FidelitySample] = deque(maxlen=RECENT)
        self._written, self._dirty = 0.0, False
        if path is not None:
            self._load(path)

    def add(self, sample: FidelitySample) -> None:
        with self._lock:
            self.groups.setdefault(sample.group, _Group()).add(sample)
            self.recent.append(sample)
            self._dirty = True
            due = time.monotonic() - self._written > 1.0
        if due:
            self.save()

    def estimates(self) -> list[FidelityEstimate]:
        with self._lock:
            return [
                FidelityEstimate(
                    *key,
                    g.n,
                    g.estimate("kl"),
                    g.estimate("top1"),
                    g.estimate("agreement"),
                    g.share / g.n,
                    list(g.kl_buckets),
                    list(g.agreement_buckets),
                )
                for key, g in sorted(self.groups.items())
            ]

    def save(self) -> None:
        """Write the estimate atomically if it changed (a crash leaves the previous file whole)."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            self._dirty = False
            state = {
                "format": FORMAT,
                "groups": [[list(key), asdict(g)] for key, g in self.groups.items()],
                "recent": [asdict(s) for s in self.recent],
            }
            self._written = time.monotonic()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.path)
        except OSError:  # a read-only or full disk: the estimate stays in memory
            tmp.unlink(missing_ok=True)

    def _load(self, path: Path) -> None:
        """The last run's estimate; a damaged or foreign file is ignored (the estimate starts over)."""
        try:
            state = json.loads(path.read_text())
            if state.get("format") != FORMAT:
                return
            groups = {tuple(key): _Group(**g) for key, g in state["groups"]}
            recent = [FidelitySample(**s) for s in state["recent"]]
            for g in groups.values():
                if len(g.kl_buckets) != len(KL_BUCKETS) + 1 or len(g.agreement_buckets) != len(AGREEMENT_BUCKETS) + 1:
                    return
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return
        self.groups, self.recent = groups, deque(recent, maxlen=RECENT)
