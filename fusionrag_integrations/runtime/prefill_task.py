"""One request's prefill as data: started once (cache, placement, selection), then computed a slice of
positions at a time, so the step loop can give each step a token budget and decode the running
requests between slices.

A fused prefill places the chunks' cached KV, lets the selector pick the chunk tokens to recompute
(QCFuse's probe, key norms, ...) and then computes the active positions (fresh + selected + the
last) in ascending order. Cutting that pass into slices is exact: a query at position p attends to
the keys at positions <= p, and every such key is either placed (never recomputed) or belongs to
this slice or an earlier one, already written. A plain prefill (no chunks, or every chunk token
selected) is the same with every position active; its first slice runs plain causal attention.
A selector that decides inside the pass (CacheBlend narrows the tokens at an early layer) cannot
be cut: it runs as one slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..fusion.layout import Layout
from ..fusion.placement import FusionContext, active_positions, build_context, ids_on_device, place_chunks
from ..fusion.recompute import pass_over
from ..fusion.selectors import Selector
from ..model.attention import AttentionMode, CacheAttention, KVCache
from ..model.forward import run_layers
from ..model.graphs import GraphCache
from ..model.transformer import TransformerModel
from ..store.prefix_cache import PrefixCache


class PrefillTask:
    def __init__(
        self,
        model: TransformerModel,
        cache: KVCache,
        layout: Layout,
        selector: Selector | None,
        ratio: float,
        prefixes: PrefixCache,
        backend: str,
        graphs: GraphCache | None,
    ) -> None:
        """Places the chunks and runs the selection (model work: a step's first slice of this request)."""
        self.model, self.cache, self.layout, self.backend, self.graphs = model, cache, layout, backend, graphs
        self.ids = ids_on_device(layout.token_ids, model.device)
        self.n = len(layout.token_ids)
        self.selected: torch.Tensor | None = None
        self.selector_name, self.ratio = (selector.name if selector is not None else ""), ratio  # what the stats report
        self.positions: torch.Tensor | None = None  # the active positions in order (None: every one)
        self.n_chunk, self.prefix_tokens, self.seconds = 0, 0, 0.0
        self.done = 0  # active positions computed so far
        self.whole: tuple | None = None  # an in-pass selection: (logits, selected) from one pass
        self.ctx: FusionContext | None = None  # a fused prefill's context (the guard reads its signals)
        self.prefix_ids: tuple = ()  # the key of the prompt's text before the first chunk (remembered once computed)
        self.prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None
        if layout.chunks and selector is not None:
            self._start_fused(selector, ratio, prefixes, graphs)
        else:
            self.positions, self.plain = None, True  # every position, in order
            self.total = self.n

    def _start_fused(self, selector: Selector, ratio: float, prefixes: PrefixCache, graphs: GraphCache | None) -> None:
        layout, cache = self.layout, self.cache
        self.prefix_ids, prefix_kv = prefixes.lookup(
            layout.token_ids, layout.chunks[0].start, selector.name, layout.tenant
        )
        self.prefix_kv, self.prefixes = prefix_kv, prefixes
        reused = 0
        if prefix_kv is not None:  # the prompt's text before the first chunk: exact, it attends to itself only
            reused = prefix_kv[0].shape[1]
            cache.k[:, :reused], cache.v[:, :reused] = prefix_kv
            self.prefix_tokens = reused
        place_chunks(self.model, cache, layout.chunks, self.backend)
        ctx = build_context(self.model, cache, self.ids, layout.chunks, reused, self.backend, graphs)
        self.ctx = ctx
        self.n_chunk = n_chunk = int(ctx.chunk_positions.numel())
        share = ratio if selector.fixed_share is None else selector.fixed_share  # full / none: whatever the ratio
        budget = min(round(share * n_chunk), n_chunk)
        in_pass = selector.in_pass(ctx, budget)
        if in_pass is not None:  # every token runs until the selector has decided: not cut into slices
            everything = torch.arange(reused, self.n, device=self.ids.device)
            self.whole = (pass_over(ctx, everything, in_pass.before_write), in_pass.selected)
            self.selected, self.total, self.plain = in_pass.selected, 1, False
            return
        if budget == n_chunk:
            self.selected = ctx.chunk_positions
        elif budget == 0:
            self.selected = ctx.chunk_positions[:0]
        else:
            self.selected = selector.select(ctx, budget)
        n_fresh = self.n - reused - n_chunk
        if budget == n_chunk and not reused:  # everything recomputed: a plain prefill
            self.positions, self.plain, self.total = None, True, self.n
            return
        self.positions, self.plain = active_positions(ctx, self.selected), False
        last_is_fresh = ctx.last_fresh_position == self.n - 1
        self.total = n_fresh + budget + (0 if last_is_fresh else 1)  # known on the host: no device sync

    @property
    def remaining(self) -> int:
        return self.total - self.done

    @property
    def sliceable(self) -> bool:
        """Whether its next positions can run as a slice (in a packed step too): not an in-pass selection."""
        return self.whole is None

    def run(self, budget: int) -> torch.Tensor | None:
        """Compute the next `budget` positions (at least one); the last token's logits [1, V] once all are.
        (The caller times it, synchronising the device: `seconds` is the model time of this prefill.)"""
        if self.whole is not None:
            self.done = self.total
            self._remember_prefix()
            return self.whole[0]
        piece = self.next_slice(budget)
        h = self._graphed(piece) if piece.final and not self.plain and self.done == 0 else None
        if h is None:
            h, _ = run_layers(self.model, piece.ids, piece.positions, piece.attention, last_row_only=True)
        return self.finish_slice(piece, h[-1:])

    def _graphed(self, piece: Slice) -> torch.Tensor | None:
        """A whole short recompute replayed from a CUDA graph (launch-bound eager); None where not graphed."""
        return None if self.graphs is None else self.graphs.recompute_last(self.cache, piece.ids, piece.positions)

    def next_slice(self, budget: int) -> Slice:
        """The next `budget` positions (at least one) as a pass to run, alone or packed with other work;
        nothing changes until `finish_slice` (a packed step that fails runs its parts again, one by one)."""
        assert self.whole is None, "an in-pass selection runs whole (sliceable is False)"
        start, end = self.done, min(self.total, self.done + max(1, budget))
        if self.plain:
            ids, positions = self.ids[start:end], torch.arange(start, end, device=self.ids.device)
            mode = AttentionMode.CAUSAL_FROM_ZERO if start == 0 else AttentionMode.BY_POSITION
            attention = CacheAttention(self.cache, mode, end - 1, self.backend)
        else:
            assert self.positions is not None  # not plain: a fused pass's active positions
            positions = self.positions[start:end]
            ids = self.ids[positions]
            attention = CacheAttention(self.cache, AttentionMode.BY_POSITION, self.n - 1, self.backend)
        return Slice(ids, positions, attention, end, end == self.total)

    def finish_slice(self, piece: Slice, last_hidden: torch.Tensor) -> torch.Tensor | None:
        """The slice ran (`last_hidden`: its last row's final hidden state); the logits [1, V] when it was
        the last one."""
        self.done = piece.end
        if not piece.final:
            return None
        self._remember_prefix()
        return self.model.logits(last_hidden)

    def _remember_prefix(self) -> None:
        if self.prefix_ids and self.prefix_kv is None:
            self.prefixes.remember(self.prefix_ids, None, self.cache)


@dataclass
class Slice:
    """A prefill slice ready to run: its tokens, their positions, the attention over the request's cache."""

    ids: torch.Tensor
    positions: torch.Tensor
    attention: CacheAttention
    end: int  # the task's `done` once it has run
    final: bool
