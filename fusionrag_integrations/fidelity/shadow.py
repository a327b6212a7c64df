"""The shadow: a sampled fused request run again with full attention, a slice at a time, in the step
loop's spare capacity (a step with no request waiting and no request's prefill in it).

A capture rides on the request (request.shadow): at its first token the executor keeps the fused
first-token logits and the prompt's token ids; when it finishes, the tokens it returned. The job
then prefills prompt + returned tokens (but the last) with plain causal attention, reading the
logits from the last prompt position on: the first row is full attention's first-token
distribution, each later row its choice for the next returned token (teacher forcing). The
answer was delivered before any of this runs: a shadow never holds a response back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..model.attention import AttentionMode, CacheAttention, KVCache
from ..model.forward import run_layers
from ..model.transformer import TransformerModel
from ..outputs import FidelitySample, GenerationStats
from ..store.chunk_kv import is_standalone
from .measures import kl_divergence, teacher_forced_agreement, top1_agreement

if TYPE_CHECKING:
    from ..fusion.layout import Layout


@dataclass
class ShadowCapture:
    """What a sampled request leaves for its shadow (filled in by the executor)."""

    model: str
    kv_format: str
    fused_logits: torch.Tensor | None = None  # [V] float32, on the CPU
    token_ids: list[int] = field(default_factory=list)
    selector: str = ""
    ratio: float = 0.0
    recompute_share: float = 0.0
    precompute: str = "standalone"
    stats: GenerationStats | None = None  # the request's GenerationStats: its `fidelity` is set when measured
    signals: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    weight: float = 1.0

    def take_prefill(self, logits: torch.Tensor, token_ids: list[int], layout: Layout, stats: GenerationStats) -> bool:
        """Keep what the comparison needs; False when nothing was fused (no chunk KV kept: nothing to judge)."""
        if not layout.chunks or stats.tokens_reused == 0:
            return False
        self.fused_logits = logits.detach().float().cpu().clone()
        self.token_ids, self.stats = list(token_ids), stats
        self.selector, self.ratio = stats.selector or "", float(stats.recompute_ratio or 0.0)
        self.recompute_share = stats.tokens_recomputed / max(stats.tokens_recomputed + stats.tokens_reused, 1)
        standalone = {is_standalone(c.entry.context_id) for c in layout.chunks}
        self.precompute = "mixed" if len(standalone) > 1 else ("standalone" if standalone.pop() else "similar")
        return True


class ShadowJob:
    """Full attention over prompt + returned tokens, computed `run(budget)` positions at a time."""

    def __init__(
        self,
        capture: ShadowCapture,
        answer: list[int],
        model: TransformerModel,
        new_cache: Callable[[int], KVCache],
        backend: str,
    ) -> None:
        self.capture, self.answer, self.model, self.backend = capture, list(answer), model, backend
        self.n = len(capture.token_ids)
        self.total = self.n + max(len(self.answer) - 1, 0)  # the last returned token is never fed back
        self._new_cache = new_cache
        self.cache: KVCache | None = None
        self.done = 0
        self.rows: list[torch.Tensor] = []

    @property
    def remaining(self) -> int:
        return self.total - self.done

    @torch.inference_mode()
    def run(self, budget: int) -> FidelitySample | None:
        """Compute the next `budget` positions (at least one); the sample once all are computed."""
        if self.cache is None:
            self.cache = self._new_cache(self.total)
        cache = self.cache
        start, end = self.done, min(self.total, self.done + max(budget, 1))
        device = self.model.device
        sequence = torch.tensor((self.capture.token_ids + self.answer)[start:end], device=device)
        positions = torch.arange(start, end, device=device)
        mode = AttentionMode.CAUSAL_FROM_ZERO if start == 0 else AttentionMode.BY_POSITION
        h, _ = run_layers(self.model, sequence, positions, CacheAttention(cache, mode, end - 1, self.backend))
        first_judged = max(self.n - 1 - start, 0)  # rows from the last prompt position on are read
        if first_judged < end - start:
            self.rows.append(self.model.logits(h[first_judged:]).cpu())
        self.done = end
        return self._sample() if self.done == self.total else None

    def _sample(self) -> FidelitySample:
        self.cache = None  # its memory goes back now
        full = torch.cat(self.rows)
        c = self.capture
        assert c.fused_logits is not None  # taken at the first token, before the job exists
        top1 = top1_agreement(full[0], c.fused_logits)
        agreement = teacher_forced_agreement(full, self.answer) if self.answer else top1  # no token: the first
        return FidelitySample(
            kl=kl_divergence(full[0], c.fused_logits),
            top1=top1,
            agreement=agreement,
            tokens=len(self.answer),
            selector=c.selector,
            ratio=c.ratio,
            recompute_share=c.recompute_share,
            kv_format=c.kv_format,
            precompute=c.precompute,
            model=c.model,
            signals=dict(c.signals),
            score=c.score,
            weight=c.weight,
        )
