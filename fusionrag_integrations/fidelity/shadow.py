"""The shadow: a sampled fused request run again with full attention, a slice at a time, in the step
loop's spare capacity (a step with no request waiting and no request's prefill in it).

A capture rides on the request (request.shadow): at its first token the executor keeps the fused
first-token logits and the prompt's token ids; when it finishes, the tokens it returned. The job
then prefills prompt + returned tokens (but the last) with plain causal attention, reading the
logits from the last prompt position on: the first row is full attention's first-token
distribution, each later row its choice for the next returned token (teacher forcing). The
answer was delivered before any of this runs: a shadow never holds a response back.

A request the guard escalates is answered by full attention, yet its fused prefill ran too: the
capture keeps that prefill's cache and first-token logits, takes full attention's from the second
prefill, and the job then feeds the returned (full attention's) tokens to the fused cache. The
comparison is the same one with the roles of the prefixes swapped: both answers agree up to their
first difference, which either way counts as one disagreement; only the tokens after it are judged
after another prefix. So the requests the guard escalates are measured too, not only the few it
explores, and the controller keeps getting evidence when it escalates most.
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
    fused_cache: KVCache | None = None  # an escalated request's fused prefill, kept for the comparison
    full_logits: torch.Tensor | None = None  # [V] float32: an escalated request's full first-token logits

    @property
    def escalated(self) -> bool:
        return self.fused_cache is not None

    def take_prefill(self, logits: torch.Tensor, token_ids: list[int], layout: Layout, stats: GenerationStats) -> bool:
        """Keep what the comparison needs; False when nothing was fused (no chunk KV kept: nothing to judge).
        For an escalated request this is full attention's prefill: the fused one was kept at `escalate`."""
        self.token_ids, self.stats = list(token_ids), stats
        if self.escalated:
            self.full_logits = _host(logits)
            return True
        if not layout.chunks or stats.tokens_reused == 0:
            return False
        self.fused_logits = _host(logits)
        share = stats.tokens_recomputed / max(stats.tokens_recomputed + stats.tokens_reused, 1)
        self._describe(layout, stats.selector or "", float(stats.recompute_ratio or 0.0), share)
        return True

    def escalate(
        self, logits: torch.Tensor, cache: KVCache, layout: Layout, selector: str, ratio: float, share: float
    ) -> None:
        """The guard escalated this request after its fused prefill: keep that prefill's cache and last
        logits, and what it was (full attention's prefill runs in a cache of its own)."""
        self.fused_logits, self.fused_cache = _host(logits), cache
        self._describe(layout, selector, ratio, share)

    def _describe(self, layout: Layout, selector: str, ratio: float, share: float) -> None:
        self.selector, self.ratio, self.recompute_share = selector, ratio, share
        standalone = {is_standalone(c.entry.context_id) for c in layout.chunks}
        self.precompute = "mixed" if len(standalone) > 1 else ("standalone" if standalone.pop() else "similar")

    def sample(self, reference_first: torch.Tensor, judge_rows: torch.Tensor, answer: list[int]) -> FidelitySample:
        """The sample: first-token figures from full attention's and the fused logits; teacher-forced
        agreement from `judge_rows` (the distribution for each returned token, after the tokens before)."""
        assert self.fused_logits is not None  # taken at the first token, before any job exists
        top1 = top1_agreement(reference_first, self.fused_logits)
        return FidelitySample(
            kl=kl_divergence(reference_first, self.fused_logits),
            top1=top1,
            agreement=teacher_forced_agreement(judge_rows, answer) if answer else top1,  # no token: the first
            tokens=len(answer),
            selector=self.selector,
            ratio=self.ratio,
            recompute_share=self.recompute_share,
            kv_format=self.kv_format,
            precompute=self.precompute,
            model=self.model,
            signals=dict(self.signals),
            score=self.score,
            weight=self.weight,
            escalated=self.escalated,
        )


def _host(logits: torch.Tensor) -> torch.Tensor:
    return logits.detach().float().cpu().clone()


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
        return self.capture.sample(full[0], full, self.answer)


class EscalatedJob:
    """An escalated request's measurement: its returned tokens (full attention's answer, but the last)
    fed to its kept fused cache, `run(budget)` positions at a time, teacher-forced."""

    def __init__(self, capture: ShadowCapture, answer: list[int], model: TransformerModel, backend: str) -> None:
        self.capture, self.answer, self.model, self.backend = capture, list(answer), model, backend
        self.n = len(capture.token_ids)
        self.fed = self.answer[:-1]
        self.done = 0
        assert capture.fused_logits is not None  # kept when the guard escalated
        self.rows: list[torch.Tensor] = [capture.fused_logits[None]]

    @property
    def remaining(self) -> int:
        return len(self.fed) - self.done + 1  # at least one call: the one that returns the sample

    @torch.inference_mode()
    def run(self, budget: int) -> FidelitySample | None:
        """Feed the next `budget` returned tokens (at least one); the sample once all are fed."""
        c = self.capture
        assert c.fused_cache is not None and c.full_logits is not None  # set by the executor
        if self.done < len(self.fed):
            start, end = self.done, min(len(self.fed), self.done + max(budget, 1))
            device = self.model.device
            ids = torch.tensor(self.fed[start:end], device=device)
            positions = torch.arange(self.n + start, self.n + end, device=device)
            attention = CacheAttention(c.fused_cache, AttentionMode.BY_POSITION, self.n + end - 1, self.backend)
            h, _ = run_layers(self.model, ids, positions, attention)
            self.rows.append(self.model.logits(h).float().cpu())
            self.done = end
            if self.done < len(self.fed):
                return None
        sample = c.sample(c.full_logits, torch.cat(self.rows), self.answer)
        c.fused_cache = None  # its memory goes back now
        return sample
