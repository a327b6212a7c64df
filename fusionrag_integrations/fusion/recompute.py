"""Selective recompute: one pass over the fresh tokens plus the selected chunk tokens.

At each layer their new K/V overwrite the cached rows, and each query attends to every key at a
position <= its own, cached or fresh (exact causal by position). A selector picks the chunk tokens
before the pass (`select`), or inside it (`in_pass`: CacheBlend decides at an early layer).
"""

from __future__ import annotations

import torch

from ..model.attention import AttentionMode, CacheAttention, KVCache
from ..model.forward import run_layers
from ..model.transformer import TransformerModel
from ..runtime.graphs import GraphCache
from ..runtime.pacing import Pacing, paced_forward
from .placement import FusionContext, PlacedChunk, active_positions, build_context, place_chunks
from .selectors import Selector


def recompute(ctx: FusionContext, selected: torch.Tensor) -> torch.Tensor:
    """The selective-recompute pass over fresh + selected positions; returns the last token's logits [1, V].

    When every position is active this is a plain prefill, run as one (causal flash attention).
    """
    n = ctx.num_positions
    active = active_positions(ctx, selected)
    if active.numel() == n:
        positions = torch.arange(n, device=active.device)
        if ctx.pacing is not None and ctx.pacing.splits(n):
            return paced_forward(ctx.model, ctx.token_ids, positions, ctx.cache, ctx.pacing, ctx.backend, True)
        mode = AttentionMode.CAUSAL_FROM_ZERO
        return ctx.model.forward(ctx.token_ids, positions, ctx.cache, mode, n - 1, backend=ctx.backend)
    return _pass(ctx, active)


def _pass(ctx: FusionContext, positions: torch.Tensor, before_write=None) -> torch.Tensor:
    if before_write is None and ctx.pacing is not None and ctx.pacing.splits(positions.numel()):
        ids = ctx.token_ids[positions]
        return paced_forward(ctx.model, ids, positions, ctx.cache, ctx.pacing, ctx.backend, False)
    attention = CacheAttention(ctx.cache, AttentionMode.BY_POSITION, ctx.num_positions - 1, ctx.backend)
    ids = ctx.token_ids[positions]
    h, _ = run_layers(ctx.model, ids, positions, attention, before_write=before_write, last_row_only=True)
    return ctx.model.logits(h[-1:])


def select_and_recompute(ctx: FusionContext, selector: Selector, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Let the selector pick `budget` chunk tokens and recompute them with the fresh tokens.
    Returns (last-token logits [1, V], selected positions)."""
    n_chunk = int(ctx.chunk_positions.numel())
    budget = min(budget, n_chunk)
    in_pass = selector.in_pass(ctx, budget)
    if in_pass is not None:  # every token runs until the selector has decided, then only its picks go on
        everything = torch.arange(ctx.reused_prefix, ctx.num_positions, device=ctx.chunk_positions.device)
        logits = _pass(ctx, everything, before_write=in_pass.before_write)
        return logits, in_pass.selected
    if budget == n_chunk:
        selected = ctx.chunk_positions
    elif budget == 0:
        selected = ctx.chunk_positions[:0]
    else:
        selected = selector.select(ctx, budget)
    return recompute(ctx, selected), selected


def fused_prefill(
    model: TransformerModel,
    cache: KVCache,
    token_ids: torch.Tensor,
    chunks: list[PlacedChunk],
    selector: Selector,
    ratio: float,
    prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    backend: str = "never",
    graphs: GraphCache | None = None,
    pacing: Pacing | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Place the chunks (and a cached prompt prefix, if given), select, recompute (a piece at a time
    under `pacing`, when the recompute is long: runtime/pacing.py).
    Returns (last-token logits [1, V], selected positions, number of chunk tokens)."""
    reused = 0
    if prefix_kv is not None:  # the prompt's text before the first chunk: exact, it attends to itself only
        reused = prefix_kv[0].shape[1]
        cache.k[:, :reused], cache.v[:, :reused] = prefix_kv
    place_chunks(model, cache, chunks, backend)
    ctx = build_context(model, cache, token_ids, chunks, reused, backend, graphs)
    ctx.pacing = pacing
    n_chunk = int(ctx.chunk_positions.numel())
    share = ratio if selector.fixed_share is None else selector.fixed_share  # full / none: whatever the ratio
    logits, selected = select_and_recompute(ctx, selector, round(share * n_chunk))
    return logits, selected, n_chunk
