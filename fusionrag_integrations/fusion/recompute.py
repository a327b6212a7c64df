"""Selective recompute: one pass over the fresh tokens plus the selected chunk tokens.

At each layer their new K/V overwrite the cached rows, and each query attends to every key at a
position <= its own, cached or fresh (exact causal by position). A selector picks the chunk tokens
before the pass (`select`), or inside it (`in_pass`: CacheBlend decides at an early layer).
"""

from __future__ import annotations

import torch

from ..model.attention import AttentionMode, CacheAttention, KVCache
from ..model.forward import BeforeWrite, run_layers
from ..model.graphs import GraphCache
from ..model.transformer import TransformerModel
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
        mode = AttentionMode.CAUSAL_FROM_ZERO
        return ctx.model.forward(ctx.token_ids, positions, ctx.cache, mode, n - 1, backend=ctx.backend)
    return pass_over(ctx, active)


def pass_over(ctx: FusionContext, positions: torch.Tensor, before_write: BeforeWrite | None = None) -> torch.Tensor:
    """One pass of these positions (sorted) over the fused cache; the last one's logits [1, V]."""
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
        logits = pass_over(ctx, everything, before_write=in_pass.before_write)
        assert in_pass.selected is not None, "an in-pass selector decides during the pass"
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
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Place the chunks (and a cached prompt prefix, if given), select, recompute in one pass (the step
    loop cuts the same work into slices: runtime/prefill_task.py).
    Returns (last-token logits [1, V], selected positions, number of chunk tokens)."""
    reused = 0
    if prefix_kv is not None:  # the prompt's text before the first chunk: exact, it attends to itself only
        reused = prefix_kv[0].shape[1]
        cache.k[:, :reused], cache.v[:, :reused] = prefix_kv
    place_chunks(model, cache, chunks, backend)
    ctx = build_context(model, cache, token_ids, chunks, reused, backend, graphs)
    n_chunk = int(ctx.chunk_positions.numel())
    share = ratio if selector.fixed_share is None else selector.fixed_share  # full / none: whatever the ratio
    logits, selected = select_and_recompute(ctx, selector, round(share * n_chunk))
    return logits, selected, n_chunk
