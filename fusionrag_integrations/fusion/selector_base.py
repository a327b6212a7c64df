"""What every token selector shares: the Selector interface and how a budget is split over chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..model.forward import BeforeWrite
from .placement import FusionContext


def allocate_weighted(lengths: list[int], weights: list[float], budget: int) -> list[int]:
    """Split `budget` over chunks in proportion to `weights`, at most `lengths[i]` each (largest
    remainder; what a full chunk cannot take goes to the others), summing to min(budget, total)."""
    budget = min(budget, sum(lengths))
    counts = [0] * len(lengths)
    open_ = [i for i, n in enumerate(lengths) if n > 0]
    while budget > sum(counts) and open_:
        left = budget - sum(counts)
        total = sum(max(weights[i], 0.0) for i in open_)
        share = {i: (max(weights[i], 0.0) / total if total > 0 else 1 / len(open_)) * left for i in open_}
        add = {i: int(share[i]) for i in open_}
        for i in sorted(open_, key=lambda i: share[i] - add[i], reverse=True)[: left - sum(add.values())]:
            add[i] += 1
        for i in open_:
            counts[i] = min(lengths[i], counts[i] + add[i])
        open_ = [i for i in open_ if counts[i] < lengths[i]]
    return counts


def allocate_budget(lengths: list[int], budget: int) -> list[int]:
    """Split `budget` over chunks in proportion to their lengths (largest remainder), summing exactly."""
    return allocate_weighted(lengths, [float(n) for n in lengths], budget)


def top_per_chunk(ctx: FusionContext, scores: torch.Tensor, budget: int) -> torch.Tensor:
    """scores aligned with ctx.chunk_positions -> the best-scoring positions of each chunk, budget split by length."""
    lengths = [c.entry.num_tokens for c in ctx.chunks]
    picked, offset = [], 0
    for c, n, want in zip(ctx.chunks, lengths, allocate_budget(lengths, budget)):
        if want:
            best = torch.topk(scores[offset : offset + n], want).indices
            picked.append(best + c.start)
        offset += n
    return sorted_positions(picked, ctx)


def top_global(ctx: FusionContext, scores: torch.Tensor, budget: int) -> torch.Tensor:
    budget = min(budget, scores.numel())
    return torch.sort(ctx.chunk_positions[torch.topk(scores, budget).indices]).values


def sorted_positions(parts: list[torch.Tensor], ctx: FusionContext) -> torch.Tensor:
    if not parts:
        return ctx.chunk_positions[:0]
    return torch.sort(torch.cat(parts)).values


def note_missed_attention(ctx: FusionContext, attention: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Record the share of the probe's attention (aligned with ctx.chunk_positions) that falls on chunk
    tokens left unrecomputed: the question reads stale KV there, so a high share predicts divergence."""
    attention = attention.float()
    kept = ~torch.isin(ctx.chunk_positions, selected)
    ctx.signals["missed_attention"] = (attention * kept).sum() / attention.sum().clamp_min(1e-12)
    return selected


@dataclass
class InPassSelection:
    """A selection made inside the recompute pass: `before_write` (see model.forward.BeforeWrite)
    decides at some layer and narrows the pass; `selected` holds its picks once the pass has run."""

    before_write: BeforeWrite
    selected: torch.Tensor | None = None


class Selector:
    name: ClassVar[str]
    fixed_share: ClassVar[float | None] = None  # full / none: this share of chunk tokens whatever the ratio

    def select(self, ctx: FusionContext, budget: int) -> torch.Tensor:
        raise NotImplementedError

    def in_pass(self, ctx: FusionContext, budget: int) -> InPassSelection | None:
        """A hook deciding inside the recompute pass instead of `select` before it (None: not this one)."""
        return None
