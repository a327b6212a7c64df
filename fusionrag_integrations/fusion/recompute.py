"""Fusion: place cached chunks at their new positions, then selectively recompute.

1. Each chunk's cached K is re-rotated by (new start - computed start) and copied, with
   its V, into the request's cache at the chunk's place. Every other prompt token is
   "fresh" (template text, separators, the question) and is always computed.
2. A selector picks which chunk tokens to recompute (a budget of ratio x chunk tokens).
3. One pass runs the fresh tokens plus the selected ones through every layer: at each
   layer their new K/V overwrite the cached rows, and each query attends to every key at
   a position <= its own, cached or fresh (exact causal by position).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..kernels.rope_gather import place_rotated, rotation
from ..model.transformer import AttentionMode, KVCache, TransformerModel
from ..store.chunk_kv import ChunkKV


@dataclass
class PlacedChunk:
    entry: ChunkKV  # on the model's device
    start: int  # position of its first token in this prompt

    @property
    def end(self) -> int:
        return self.start + self.entry.num_tokens


@dataclass
class FusionContext:
    """What a selector may look at: the prompt, the fused cache, where chunks and question sit."""

    model: TransformerModel
    cache: KVCache
    token_ids: torch.Tensor  # [N]
    chunks: list[PlacedChunk]
    chunk_positions: torch.Tensor  # [C] sorted
    fresh_positions: torch.Tensor  # [F] sorted: always recomputed
    question_positions: torch.Tensor  # fresh tokens after the last chunk (the question and template tail)
    reused_prefix: int = 0  # positions [0, reused_prefix) came from the prefix cache (exact, never recomputed)
    last_fresh_position: int = -1  # fresh_positions[-1] known on the host (-1: no fresh token)

    @property
    def num_positions(self) -> int:
        return int(self.token_ids.numel())


# before_write sees each layer's fresh q/k/v while the cache still holds the old rows; a
# boolean mask it returns narrows the pass to those tokens from that layer's attention on.
BeforeWrite = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], "torch.Tensor | None"]
# after_write sees each layer's queries once their K/V are in the cache (attention probes).
AfterWrite = Callable[[int, torch.Tensor, torch.Tensor], None]


def place_chunks(model: TransformerModel, cache: KVCache, chunks: list[PlacedChunk]) -> None:
    """Copy each chunk's KV into the cache at its new start, keys re-rotated by the position delta
    (one fused read-rotate-write pass per chunk on CUDA; YaRN's scaling is not re-applied: it is in
    the cached keys). The angles of all chunks are computed on the host and sent in one copy."""
    if not chunks:
        return
    backend = model.kernel_backend(cache.k)
    cos, sin = rotation([c.start - c.entry.start for c in chunks], model.rope.inv_freq_host)
    cos, sin = to_device(torch.stack((cos, sin)), cache.k.device)
    for i, c in enumerate(chunks):
        span = slice(c.start, c.end)
        place_rotated(
            cache.k[:, span], c.entry.k, cos[i], sin[i], values=(cache.v[:, span], c.entry.v), backend=backend
        )


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the device's queue (pinned, asynchronous copy on CUDA)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def build_context(
    model: TransformerModel, cache: KVCache, token_ids: torch.Tensor, chunks: list[PlacedChunk], reused_prefix: int = 0
) -> FusionContext:
    """The layout is known on the host: positions are computed there and sent without a device sync,
    so the selector's launches queue up behind the placement still running on the GPU."""
    n = int(token_ids.numel())
    is_chunk = torch.zeros(n, dtype=torch.bool)
    for c in chunks:
        is_chunk[c.start : c.end] = True
    last_chunk_end = max((c.end for c in chunks), default=0)
    positions = torch.arange(n)
    fresh = positions[~is_chunk & (positions >= reused_prefix)]
    return FusionContext(
        model=model,
        cache=cache,
        token_ids=token_ids,
        chunks=chunks,
        chunk_positions=to_device(positions[is_chunk], token_ids.device),
        fresh_positions=to_device(fresh, token_ids.device),
        question_positions=to_device(fresh[fresh >= last_chunk_end], token_ids.device),
        reused_prefix=reused_prefix,
        last_fresh_position=int(fresh[-1]) if fresh.numel() else -1,
    )


@torch.inference_mode()
def run_layers(
    model: TransformerModel,
    cache: KVCache,
    ids: torch.Tensor,
    positions: torch.Tensor,
    before_write: BeforeWrite | None = None,
    after_write: AfterWrite | None = None,
    num_layers: int | None = None,
    finish_last: bool = True,
    max_position: int | None = None,
    last_row_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the tokens `ids` at `positions` (sorted) through the first `num_layers` layers, writing
    their K/V by position.

    finish_last=False stops the last layer after its K/V write (and after_write): a probe that
    only reads that layer's queries skips its attention and MLP.
    last_row_only: the caller reads only the last token's output (its logits), so the last layer
    runs attention and MLP for that token alone, once every token's K/V is written (exact).
    max_position: positions[-1] if the caller knows it on the host (reading it waits for the GPU).
    Returns (hidden states, positions) of the tokens still running at the end.
    """
    h = model.embed(ids)
    cos, sin = model.rotary(positions)
    max_position = int(positions[-1]) if max_position is None else max_position
    num_layers = num_layers if num_layers is not None else model.config.num_layers
    for layer in range(num_layers):
        q, k, v = model.qkv(layer, h, cos, sin)
        keep = before_write(layer, q, k, v, positions) if before_write is not None else None
        cache.write(layer, positions, None, k, v)
        if after_write is not None:
            after_write(layer, q, positions)
        last = layer == num_layers - 1
        if last and not finish_last:
            break
        if keep is not None:
            h, q, positions, cos, sin = h[keep], q[keep], positions[keep], cos[keep], sin[keep]
        mode = AttentionMode.BY_POSITION
        if last and last_row_only:  # one query at the largest position: it sees every key up to it
            h, q, positions, mode = h[-1:], q[-1:], positions[-1:], AttentionMode.DECODE
        attn = model.attend(q, cache, layer, positions, mode, max_position)
        h = model.finish_layer(layer, h, attn)
    return h, positions


def active_positions(ctx: FusionContext, selected: torch.Tensor) -> torch.Tensor:
    """Fresh + selected + the last prompt position (its logits are the output), sorted and unique.

    Selected positions are chunk positions, never fresh ones: when the prompt ends with a fresh
    token (the usual question), the union is a sort, with no device sync."""
    selected = selected.to(ctx.fresh_positions.device)
    if ctx.last_fresh_position == ctx.num_positions - 1:
        return torch.sort(torch.cat((ctx.fresh_positions, selected))).values
    last = torch.tensor([ctx.num_positions - 1], device=ctx.fresh_positions.device)
    return torch.unique(torch.cat((ctx.fresh_positions, selected, last)))


def recompute(ctx: FusionContext, selected: torch.Tensor) -> torch.Tensor:
    """The selective-recompute pass over fresh + selected positions; returns the last token's logits [1, V].

    When every position is active this is a plain prefill, run as one (causal flash attention).
    """
    active = active_positions(ctx, selected)
    if active.numel() == ctx.num_positions:
        positions = torch.arange(ctx.num_positions, device=active.device)
        return ctx.model.forward(
            ctx.token_ids, positions, ctx.cache, AttentionMode.CAUSAL_FROM_ZERO, ctx.num_positions - 1
        )
    h, _ = run_layers(
        ctx.model, ctx.cache, ctx.token_ids[active], active, max_position=ctx.num_positions - 1, last_row_only=True
    )
    return ctx.model.logits(h[-1:])


def fused_prefill(
    model: TransformerModel,
    cache: KVCache,
    token_ids: torch.Tensor,
    chunks: list[PlacedChunk],
    selector,
    ratio: float,
    prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Place the chunks (and a cached prompt prefix, if given), let the selector pick ratio x chunk
    tokens, recompute. Returns (last-token logits [1, V], selected positions, number of chunk tokens).
    """
    reused = 0
    if prefix_kv is not None:  # the prompt's text before the first chunk: exact, it attends to itself only
        reused = prefix_kv[0].shape[1]
        cache.k[:, :reused], cache.v[:, :reused] = prefix_kv
    place_chunks(model, cache, chunks)
    ctx = build_context(model, cache, token_ids, chunks, reused)
    n_chunk = int(ctx.chunk_positions.numel())
    logits, selected = selector.run(ctx, round(ratio * n_chunk))
    return logits, selected, n_chunk


def attention_to_positions(
    q: torch.Tensor, keys: torch.Tensor, q_pos: torch.Tensor, key_positions: torch.Tensor
) -> torch.Tensor:
    """Attention probability mass each of `key_positions` receives from queries q (summed over heads and queries).

    q: [Sq, Hq, D] at positions q_pos; keys: [N, Hkv, D] (row j at position j). Causal by position.
    """
    Sq, Hq, D = q.shape
    Hkv = keys.shape[1]
    group = Hq // Hkv
    qg = q.float().view(Sq, Hkv, group, D).permute(1, 2, 0, 3).reshape(Hkv, group * Sq, D)
    scores = qg @ keys.float().permute(1, 2, 0) / D**0.5  # [Hkv, group*Sq, N]
    visible = torch.arange(keys.shape[0], device=q.device)[None, :] <= q_pos[:, None]  # [Sq, N]
    scores = scores.view(Hkv, group, Sq, -1).masked_fill(~visible, float("-inf"))
    probs = scores.softmax(dim=-1)
    return probs.sum(dim=(0, 1, 2))[key_positions]
