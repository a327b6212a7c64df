"""Token selectors: which cached chunk tokens a fused prefill recomputes.

Each selector is one small class with one rule. `select(ctx, budget)` returns positions
(a subset of ctx.chunk_positions, `budget` of them); `run` does the recompute pass and
may be overridden by a selector that decides inside that pass (CacheBlend).

| name       | rule                                                                 | source |
| full       | every chunk token: the quality ceiling (equals a full prefill)        | baseline |
| none       | no chunk token: plain concatenation, the speed ceiling                | baseline |
| epic       | the first tokens of each chunk                                        | EPIC, arXiv 2410.15332 |
| cacheblend | tokens whose K/V deviate most from the cache at an early check layer  | CacheBlend, arXiv 2405.16444 |
| fusionrag  | question's last-layer attention over chunk keys, top per chunk        | FusionRAG, arXiv 2601.12904 |
| qcfuse     | question probed through one critical layer: attention + key norm      | QCFuse, arXiv 2604.08585 |
| cacheclip  | a small auxiliary model's last-layer attention, window-grouped         | CacheClip, arXiv 2510.10129 |
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import FusionConfig
from ..errors import InvalidArgumentError
from ..model.transformer import KVCache, TransformerModel
from ..runtime.probe_graph import probe_graphs
from .recompute import FusionContext, active_positions, attention_to_positions, recompute, run_layers


def allocate_budget(lengths: list[int], budget: int) -> list[int]:
    """Split `budget` over chunks in proportion to their lengths (largest remainder), summing exactly."""
    total = sum(lengths)
    if total == 0:
        return [0] * len(lengths)
    budget = min(budget, total)
    exact = [budget * n / total for n in lengths]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(lengths)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: budget - sum(counts)]:
        counts[i] += 1
    return counts


def top_per_chunk(ctx: FusionContext, scores: torch.Tensor, budget: int) -> torch.Tensor:
    """scores aligned with ctx.chunk_positions -> the best-scoring positions of each chunk, budget split by length."""
    lengths = [c.entry.num_tokens for c in ctx.chunks]
    picked, offset = [], 0
    for c, n, want in zip(ctx.chunks, lengths, allocate_budget(lengths, budget)):
        if want:
            best = torch.topk(scores[offset : offset + n], want).indices
            picked.append(best + c.start)
        offset += n
    return _sorted(picked, ctx)


def top_global(ctx: FusionContext, scores: torch.Tensor, budget: int) -> torch.Tensor:
    budget = min(budget, scores.numel())
    return torch.sort(ctx.chunk_positions[torch.topk(scores, budget).indices]).values


def _sorted(parts: list[torch.Tensor], ctx: FusionContext) -> torch.Tensor:
    if not parts:
        return ctx.chunk_positions[:0]
    return torch.sort(torch.cat(parts)).values


class Selector:
    name: ClassVar[str]

    def select(self, ctx: FusionContext, budget: int) -> torch.Tensor:
        raise NotImplementedError

    def run(self, ctx: FusionContext, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (last-token logits [1, V], selected chunk positions)."""
        budget = min(budget, int(ctx.chunk_positions.numel()))
        if budget == ctx.chunk_positions.numel():
            selected = ctx.chunk_positions
        elif budget == 0:
            selected = ctx.chunk_positions[:0]
        else:
            selected = self.select(ctx, budget)
        return recompute(ctx, selected), selected


class FullSelector(Selector):
    name = "full"

    def run(self, ctx: FusionContext, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        return super().run(ctx, int(ctx.chunk_positions.numel()))


class NoneSelector(Selector):
    name = "none"

    def run(self, ctx: FusionContext, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        return super().run(ctx, 0)

    def select(self, ctx: FusionContext, budget: int) -> torch.Tensor:
        return ctx.chunk_positions[:0]


class EpicSelector(Selector):
    """Each chunk's first tokens: where a separately computed chunk put its own attention sink."""

    name = "epic"

    def select(self, ctx: FusionContext, budget: int) -> torch.Tensor:
        lengths = [c.entry.num_tokens for c in ctx.chunks]
        parts = [
            torch.arange(c.start, c.start + n, device=ctx.chunk_positions.device)
            for c, n in zip(ctx.chunks, allocate_budget(lengths, budget))
        ]
        return _sorted(parts, ctx)


class CacheBlendSelector(Selector):
    """One pass: every token runs layers 0..check_layer; there the chunk tokens whose fresh K/V
    deviate most from the cached ones are kept running, the rest keep their cached K/V above."""

    name = "cacheblend"

    def __init__(self, check_layer: int = 1) -> None:
        self.check_layer = check_layer

    def run(self, ctx: FusionContext, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        budget = min(budget, int(ctx.chunk_positions.numel()))
        check = min(self.check_layer, ctx.model.config.num_layers - 1)
        all_positions = torch.arange(ctx.reused_prefix, ctx.num_positions, device=ctx.chunk_positions.device)
        chosen: list[torch.Tensor] = []

        def before_write(layer: int, q, k, v, positions) -> torch.Tensor | None:
            if layer != check:
                return None
            old_k, old_v = ctx.cache.k[layer, positions], ctx.cache.v[layer, positions]
            deviation = ((k.float() - old_k.float()) ** 2).sum(dim=(1, 2)) + ((v.float() - old_v.float()) ** 2).sum(
                dim=(1, 2)
            )
            scores = deviation[ctx.chunk_positions - ctx.reused_prefix]  # positions == arange(reused_prefix, N)
            chosen.append(top_global(ctx, scores, budget))
            keep = torch.zeros(ctx.num_positions, dtype=torch.bool, device=positions.device)
            keep[active_positions(ctx, chosen[0])] = True
            return keep[ctx.reused_prefix :]

        h, _ = run_layers(
            ctx.model,
            ctx.cache,
            ctx.token_ids[all_positions],
            all_positions,
            before_write=before_write,
            max_position=ctx.num_positions - 1,
            last_row_only=True,
        )
        return ctx.model.logits(h[-1:]), chosen[0]


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
    budget; the rest goes to the chunk tokens with the largest key norms at that layer."""

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
        return torch.sort(ctx.chunk_positions[torch.cat((by_attention, by_norm))]).values


class CacheClipSelector(Selector):
    """A small auxiliary model (same tokenizer) prefills the whole prompt; its last-layer
    attention from the question ranks chunk tokens, smoothed over a small window so that
    neighbouring tokens are recomputed together (local coherence)."""

    name = "cacheclip"
    window = 3
    # The auxiliary scores depend on the prompt only, not on the budget: a sweep over ratios
    # (or a retried request) reuses them. Keyed by model identity, token ids and chunk layout.
    _scores: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def __init__(self, aux_model: TransformerModel | None = None) -> None:
        self.aux_model = aux_model

    def select(self, ctx: FusionContext, budget: int) -> torch.Tensor:
        scores = self.aux_scores(ctx)
        smooth = F.max_pool1d(scores[None, None], self.window, stride=1, padding=self.window // 2)[0, 0]
        return top_global(ctx, scores + 0.5 * smooth, budget)

    def aux_scores(self, ctx: FusionContext) -> torch.Tensor:
        aux = self.aux_model or ctx.model
        key = (id(aux), ctx.token_ids.cpu().numpy().tobytes(), ctx.chunk_positions.cpu().numpy().tobytes())
        if key not in self._scores:
            last = aux.config.num_layers - 1
            self._scores[key] = probe_attention(ctx, aux, aux.new_cache(ctx.num_positions), {last}, full=True)[last]
            while len(self._scores) > 8:
                self._scores.popitem(last=False)
        self._scores.move_to_end(key)
        return self._scores[key]


def probe_attention(
    ctx: FusionContext, model: TransformerModel, cache: KVCache, layers: set[int], full: bool
) -> dict[int, torch.Tensor]:
    """Attention mass from the question tokens to each chunk position, at each of `layers`.

    full=False runs only the fresh tokens over the fused (stale) cache and stops after the
    deepest requested layer; full=True runs every token (a plain prefill on `cache`).
    """
    positions = torch.arange(ctx.num_positions, device=ctx.fresh_positions.device) if full else ctx.fresh_positions
    ids = ctx.token_ids[positions]
    # the question is the tokens after the last chunk: a suffix of `positions` either way (sliced,
    # not masked: no device sync). Without one, the last running token probes.
    n_question = max(1, int(ctx.question_positions.numel()))
    last = ctx.num_positions - 1 if full else ctx.last_fresh_position
    scores: dict[int, torch.Tensor] = {}

    def after_write(layer: int, q: torch.Tensor, pos: torch.Tensor) -> None:
        if layer in layers:
            keys = cache.k[layer, : ctx.num_positions]
            scores[layer] = attention_to_positions(q[-n_question:], keys, pos[-n_question:], ctx.chunk_positions)

    graphs = probe_graphs(model) if not full and len(layers) == 1 else None
    queries = graphs.queries(model, cache, ids, positions, max(layers) + 1) if graphs is not None else None
    if queries is not None:  # replayed from a CUDA graph: the same pass, one launch
        after_write(max(layers), queries, positions)
        return scores
    run_layers(
        model,
        cache,
        ids,
        positions,
        after_write=after_write,
        num_layers=max(layers) + 1,
        finish_last=False,
        max_position=last if last >= 0 else None,
    )
    return scores


def profile_critical_layer(
    contexts: list[FusionContext], ratio: float = 0.15, max_fraction: float = 0.5
) -> tuple[int, list[float]]:
    """QCFuse's offline profiling: the layer whose cheap probe best predicts full attention.

    For each sample (a fused context; its cache is used up), the reference ranking is the
    question's last-layer attention over chunk tokens in a full prefill; each layer's probe
    ranking comes from running only the fresh tokens over the stale fused cache. The score
    of a layer is the mean recall of the reference's top `ratio` tokens; the best layer in
    the first `max_fraction` of the depth wins (a deeper probe would cost as much as it saves).
    Returns (layer, recall per layer).
    """
    model = contexts[0].model
    n_layers = model.config.num_layers
    recall = torch.zeros(n_layers)
    for ctx in contexts:
        k = max(1, round(ratio * int(ctx.chunk_positions.numel())))
        reference = probe_attention(ctx, model, model.new_cache(ctx.num_positions), {n_layers - 1}, full=True)
        wanted = set(torch.topk(reference[n_layers - 1], k).indices.tolist())
        probes = probe_attention(ctx, model, ctx.cache, set(range(n_layers)), full=False)
        for layer, scores in probes.items():
            recall[layer] += len(wanted & set(torch.topk(scores, k).indices.tolist())) / k
    recall /= len(contexts)
    limit = max(1, int(n_layers * max_fraction))
    return int(torch.argmax(recall[:limit])), recall.tolist()


def default_critical_layer(model: TransformerModel) -> int:
    """Without profiling: a quarter of the depth (cheap to reach, past the purely lexical layers)."""
    return max(1, model.config.num_layers // 4)


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
    )
}


def make_selector(
    selector: str | Selector,
    config: FusionConfig,
    critical_layer: int | None = None,
    aux_model: TransformerModel | None = None,
) -> Selector:
    """A selector instance from its name (configured from `config`), or the instance itself."""
    if isinstance(selector, Selector):
        return selector
    if not isinstance(selector, str) or selector not in SELECTORS:
        raise InvalidArgumentError(f"unknown selector {selector!r}; choose one of {sorted(SELECTORS)}")
    if selector == "cacheblend":
        return CacheBlendSelector(config.check_layer)
    if selector == "qcfuse":
        return QCFuseSelector(critical_layer)
    if selector == "cacheclip":
        return CacheClipSelector(aux_model)
    return SELECTORS[selector]()
