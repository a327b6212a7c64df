"""Token selectors: which cached chunk tokens a fused prefill recomputes.

Each selector is one small class with one rule: `select(ctx, budget)` returns positions (a
subset of ctx.chunk_positions, `budget` of them). A selector that decides inside the recompute
pass (CacheBlend) returns a hook from `in_pass` instead; recompute.py runs the pass either way.

| name       | rule                                                                 | source |
| full       | every chunk token: the quality ceiling (equals a full prefill)        | baseline |
| none       | no chunk token: plain concatenation, the speed ceiling                | baseline |
| epic       | the first tokens of each chunk                                        | EPIC, arXiv 2410.15332 |
| cacheblend | tokens whose K/V deviate most from the cache at an early check layer  | CacheBlend, arXiv 2405.16444 |
| fusionrag  | question's last-layer attention over chunk keys, top per chunk        | FusionRAG, arXiv 2601.12904 |
| qcfuse     | question probed through one critical layer: attention + key norm      | QCFuse, arXiv 2604.08585 |
| cacheclip  | a small auxiliary model's last-layer attention, window-grouped         | CacheClip, arXiv 2510.10129 |
| hybrid     | qcfuse's ranking + the sink tokens of context-aware chunks (default);  | ours (hybrid.py) |
|            | optional: budgets by measured KV deviation, a per-request ratio        |                  |
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import FusionConfig
from ..errors import InvalidArgumentError
from ..lru import LRU
from ..model.transformer import TransformerModel
from ..request import FusionParams
from .hybrid import DeviationReference, HybridSelector
from .placement import FusionContext, active_positions
from .probe import CriticalLayers, default_critical_layer, probe_attention
from .selector_base import (
    InPassSelection,
    Selector,
    allocate_budget,
    note_missed_attention,
    sorted_positions,
    top_global,
    top_per_chunk,
)

__all__ = ["InPassSelection", "Selector", "allocate_budget", "top_global", "top_per_chunk"]


class FullSelector(Selector):
    name, fixed_share = "full", 1.0


class NoneSelector(Selector):
    name, fixed_share = "none", 0.0


class EpicSelector(Selector):
    """Each chunk's first tokens: where a separately computed chunk put its own attention sink."""

    name = "epic"

    def select(self, ctx: FusionContext, budget: int) -> torch.Tensor:
        lengths = [c.entry.num_tokens for c in ctx.chunks]
        parts = [
            torch.arange(c.start, c.start + n, device=ctx.chunk_positions.device)
            for c, n in zip(ctx.chunks, allocate_budget(lengths, budget))
        ]
        return sorted_positions(parts, ctx)


class CacheBlendSelector(Selector):
    """One pass: every token runs layers 0..check_layer; there the chunk tokens whose fresh K/V
    deviate most from the cached ones are kept running, the rest keep their cached K/V above."""

    name = "cacheblend"

    def __init__(self, check_layer: int = 1) -> None:
        self.check_layer = check_layer

    def in_pass(self, ctx: FusionContext, budget: int) -> InPassSelection:
        check = min(self.check_layer, ctx.model.config.num_layers - 1)

        def before_write(
            layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
        ) -> torch.Tensor | None:
            if layer != check:
                return None
            old_k, old_v = ctx.cache.k[layer, positions], ctx.cache.v[layer, positions]
            deviation = ((k.float() - old_k.float()) ** 2).sum(dim=(1, 2)) + ((v.float() - old_v.float()) ** 2).sum(
                dim=(1, 2)
            )
            scores = deviation[ctx.chunk_positions - ctx.reused_prefix]  # positions == arange(reused_prefix, N)
            selection.selected = top_global(ctx, scores, budget)
            keep = torch.zeros(ctx.num_positions, dtype=torch.bool, device=positions.device)
            keep[active_positions(ctx, selection.selected)] = True
            return keep[ctx.reused_prefix :]

        selection = InPassSelection(before_write)
        return selection


class FusionRAGSelector(Selector):
    """Probe: run the fresh tokens (question included) over the fused cache; the question's
    last-layer attention over chunk keys ranks each chunk's tokens."""

    name = "fusionrag"

    def select(self, ctx: FusionContext, budget: int) -> torch.Tensor:
        last = ctx.model.config.num_layers - 1
        scores = probe_attention(ctx, ctx.model, ctx.cache, layers={last}, full=False)[last]
        return top_per_chunk(ctx, scores, budget)


class QCFuseSelector(Selector):
    """Probe only up to a critical layer: the question's attention there picks most of the
    budget; the rest goes to the chunk tokens with the largest key norms at that layer.
    critical_layer None: the engine profiles it on first use (probe.CriticalLayers)."""

    name = "qcfuse"
    attention_share = 0.75

    def __init__(self, critical_layer: int | None = None) -> None:
        self.critical_layer = critical_layer

    def select(self, ctx: FusionContext, budget: int) -> torch.Tensor:
        layer = self.critical_layer if self.critical_layer is not None else default_critical_layer(ctx.model)
        layer = min(layer, ctx.model.config.num_layers - 1)
        attention = probe_attention(ctx, ctx.model, ctx.cache, layers={layer}, full=False)[layer]
        n_attention = round(budget * self.attention_share)
        by_attention = torch.topk(attention, n_attention).indices
        key_norm = ctx.cache.k[layer, ctx.chunk_positions].float().norm(dim=-1).mean(dim=-1)
        key_norm[by_attention] = float("-inf")
        by_norm = torch.topk(key_norm, budget - n_attention).indices
        selected = torch.sort(ctx.chunk_positions[torch.cat((by_attention, by_norm))]).values
        return note_missed_attention(ctx, attention, selected)


class CacheClipSelector(Selector):
    """A small auxiliary model (same tokenizer; FusionConfig.aux_model, else the model itself)
    prefills the whole prompt; its last-layer attention from the question ranks chunk tokens,
    smoothed over a small window so that neighbouring tokens are recomputed together."""

    name = "cacheclip"
    window = 3

    def __init__(self, aux_model: TransformerModel | None = None, scores: LRU | None = None) -> None:
        self.aux_model = aux_model
        # The auxiliary scores depend on the prompt only, not on the budget: a sweep over ratios
        # (or a retried request) reuses them. The engine passes its own cache (never a global one).
        self.scores: LRU[tuple, torch.Tensor] = scores if scores is not None else LRU(max_entries=8)

    def select(self, ctx: FusionContext, budget: int) -> torch.Tensor:
        scores = self.aux_scores(ctx)
        smooth = F.max_pool1d(scores[None, None], self.window, stride=1, padding=self.window // 2)[0, 0]
        return top_global(ctx, scores + 0.5 * smooth, budget)

    def aux_scores(self, ctx: FusionContext) -> torch.Tensor:
        aux = self.aux_model or ctx.model
        key = (aux is ctx.model, ctx.token_ids.cpu().numpy().tobytes(), ctx.chunk_positions.cpu().numpy().tobytes())
        found = self.scores.get(key)
        if found is None:
            last = aux.config.num_layers - 1
            found = probe_attention(ctx, aux, aux.new_cache(ctx.num_positions), {last}, full=True)[last]
            self.scores.put(key, found)
        return found


SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls
    for cls in (
        FullSelector,
        NoneSelector,
        EpicSelector,
        CacheBlendSelector,
        FusionRAGSelector,
        QCFuseSelector,
        CacheClipSelector,
        HybridSelector,
    )
}


def make_selector(
    selector: object,  # a name or a Selector; anything else is refused below
    config: FusionConfig,
    critical_layer: int | None = None,
    aux_model: TransformerModel | None = None,
    aux_scores: LRU | None = None,
    deviations: DeviationReference | None = None,
) -> Selector:
    """A selector instance from its name (configured from `config`), or the instance itself."""
    if isinstance(selector, Selector):
        return selector
    if not isinstance(selector, str) or selector not in SELECTORS:
        raise InvalidArgumentError(f"unknown selector {selector!r}; choose one of {sorted(SELECTORS)}")
    if selector == "cacheblend":
        return CacheBlendSelector(config.check_layer)
    if selector == "qcfuse":
        return QCFuseSelector(critical_layer if critical_layer is not None else config.critical_layer)
    if selector == "cacheclip":
        return CacheClipSelector(aux_model, aux_scores)
    if selector == "hybrid":
        adaptive = (deviations or DeviationReference()) if config.adaptive_ratio else None
        layer = critical_layer if critical_layer is not None else config.critical_layer
        return HybridSelector(
            layer, config.sink_tokens, adaptive, config.hybrid_budget, config.check_layer, sink_scope=config.sink_scope
        )
    return SELECTORS[selector]()


class SelectorFactory:
    """A request's selector and ratio from its FusionParams and the engine's FusionConfig, fully configured:
    QCFuse and hybrid get the configured layer, else the one profiled for this model (`needs_profile` says
    when none is yet: the executor profiles it first, an explicit step); CacheClip gets the auxiliary model
    (loaded on first use) and the engine's score cache; hybrid the engine's running deviation reference."""

    def __init__(
        self,
        config: FusionConfig,
        critical_layers: CriticalLayers,
        fingerprint: str,
        load_aux: Callable[[str], TransformerModel],
    ) -> None:
        self.config, self.critical_layers, self.fingerprint = config, critical_layers, fingerprint
        self.load_aux = load_aux
        self.aux_model: TransformerModel | None = None
        self.aux_scores: LRU[tuple, torch.Tensor] = LRU(max_entries=8)
        self.deviations = DeviationReference()  # the adaptive ratio's scale: this engine's recent requests
        self._lock = threading.Lock()

    def __call__(self, fusion: FusionParams) -> tuple[Selector, float]:
        chosen = self.config.selector if fusion.selector is None else fusion.selector
        aux = self._aux_model() if chosen == "cacheclip" else None
        layer = self.config.critical_layer
        layer = self.critical_layers.get(self.fingerprint) if layer is None else layer
        ratio = self.config.recompute_ratio if fusion.recompute_ratio is None else fusion.recompute_ratio
        return make_selector(chosen, self.config, layer, aux, self.aux_scores, self.deviations), ratio

    def needs_profile(self, fusion: FusionParams) -> bool:
        """Whether this request's selector wants QCFuse's critical layer and none is known for the model yet
        (another engine on the cache directory may have profiled it since this one looked)."""
        chosen = self.config.selector if fusion.selector is None else fusion.selector
        if chosen not in ("qcfuse", "hybrid") or self.config.critical_layer is not None:
            return False
        if self.critical_layers.get(self.fingerprint) is None:
            self.critical_layers.reload()
        return self.critical_layers.get(self.fingerprint) is None

    def _aux_model(self) -> TransformerModel | None:
        with self._lock:
            if self.config.aux_model is not None and self.aux_model is None:
                self.aux_model = self.load_aux(self.config.aux_model)
            return self.aux_model
