"""A small predictor of divergence: logistic regression from the guard's signals (signals.py) to the
probability that a fused answer's teacher-forced agreement with full attention falls below `label`.

Logistic regression because the guard needs a score it can rank and threshold, fitted in milliseconds
from a few hundred shadow samples, and readable (one weight per signal); the shipped fit
(calibrated.py) comes from the dev sets, an engine refits on its own shadow samples (guard.py).
A signal a request lacks (no probe, say) enters at its training mean: it moves no score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .signals import SIGNALS

CLAMP = 4.0  # standardised signals are held within +-4 of their training mean
L2 = 1e-2  # ridge on the standardised weights: a few hundred samples, seven correlated signals


@dataclass(frozen=True)
class DivergencePredictor:
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    label: float  # diverged: teacher-forced agreement below this
    samples: int  # fitted on
    source: str  # what it was fitted on

    def score(self, signals: dict[str, float]) -> float:
        """P(diverged | signals)."""
        z = self.bias
        for name, mu, sd, w in zip(self.features, self.mean, self.scale, self.weights):
            value = signals.get(name)
            if value is not None and math.isfinite(value):
                z += w * min(max((value - mu) / sd, -CLAMP), CLAMP)  # far outside the fit: no extrapolation
        return 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DivergencePredictor:
        d = dict(d)
        for key in ("features", "mean", "scale", "weights"):
            d[key] = tuple(d[key])
        return cls(**d)


def _matrix(rows: Sequence[dict[str, float]], features: tuple[str, ...]) -> tuple[torch.Tensor, list, list]:
    x = torch.full((len(rows), len(features)), float("nan"), dtype=torch.float64)
    for i, row in enumerate(rows):
        for j, name in enumerate(features):
            value = row.get(name)
            if value is not None and math.isfinite(value):
                x[i, j] = value
    mean = torch.nanmean(x, dim=0).nan_to_num(0.0)
    x = torch.where(torch.isnan(x), mean.expand_as(x), x)
    scale = x.std(dim=0).nan_to_num(1.0)
    scale = torch.where(scale > 1e-9, scale, torch.ones_like(scale))
    return (x - mean) / scale, mean.tolist(), scale.tolist()


def fit_predictor(
    signals: Sequence[dict[str, float]],
    agreements: Sequence[float],
    label: float,
    source: str,
    weights: Sequence[float] | None = None,
    features: tuple[str, ...] = SIGNALS,
) -> DivergencePredictor:
    """Weighted ridge logistic regression (L-BFGS, float64). Raises ValueError without both outcomes."""
    y = torch.tensor([float(a < label) for a in agreements], dtype=torch.float64)
    if len(y) < 4 or y.min() == y.max():
        raise ValueError("fitting needs samples that diverged and samples that did not")
    x, mean, scale = _matrix(signals, features)
    w = torch.tensor(weights if weights is not None else [1.0] * len(y), dtype=torch.float64)
    w = w / w.mean()
    params = torch.zeros(len(features) + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        z = x @ params[1:] + params[0]
        value = (w * torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")).mean()
        value = value + L2 * (params[1:] ** 2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    found = params.detach().tolist()
    return DivergencePredictor(features, tuple(mean), tuple(scale), tuple(found[1:]), found[0], label, len(y), source)


def roc_auc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve: P(a positive outscores a negative), ties counted half (Mann-Whitney)."""
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    if not pos or not neg:
        raise ValueError("AUC needs positives and negatives")
    ranked = sorted((s, i) for i, s in enumerate(list(pos) + list(neg)))
    ranks = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[ranked[k][1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(ranks[: len(pos)])
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
