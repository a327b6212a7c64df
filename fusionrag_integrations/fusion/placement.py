"""Placing cached chunks into a request's cache, and what selectors may look at afterwards.

Each chunk's cached K is re-rotated by (new start - computed start) and copied, with its V, into
the request's cache at the chunk's place (exact: RoPE rotations compose). Every other prompt token
is "fresh" (template text, separators, the question) and is always computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..kernels.dequant_place import place_compact
from ..kernels.rope_gather import place_rotated, rotation
from ..model.attention import KVCache
from ..model.graphs import GraphCache
from ..model.transformer import TransformerModel
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
    backend: str = "never"  # the runner's kernel choice (model.attention.resolve_kernels)
    graphs: GraphCache | None = None  # the runner's CUDA graphs (the probe replays from them)
    # what the selector saw of its own decision, for the fidelity guard (fidelity/signals.py): device
    # scalars, read once the prefill has synchronised (no extra sync on the path to the first token)
    signals: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_positions(self) -> int:
        return int(self.token_ids.numel())


def place_chunks(model: TransformerModel, cache: KVCache, chunks: list[PlacedChunk], backend: str = "never") -> None:
    """Copy each chunk's KV into the cache at its new start, keys re-rotated by the position delta
    (one fused read-rotate-write pass per chunk on CUDA; YaRN's scaling is not re-applied: it is in
    the cached keys). The angles of all chunks are computed on the host and sent in one copy."""
    if not chunks:
        return
    cos, sin = rotation([c.start - c.entry.start for c in chunks], model.rope.inv_freq_host)
    cos, sin = to_device(torch.stack((cos, sin)), cache.k.device)
    for i, c in enumerate(chunks):
        span, e = slice(c.start, c.end), c.entry.for_compute()  # a side-stream copy landed before it is read
        if e.kv_format == "native":
            place_rotated(cache.k[:, span], e.k, cos[i], sin[i], values=(cache.v[:, span], e.v), backend=backend)
        else:  # dequantised where it is placed: the compact form is all that moved
            dst_k, dst_v = cache.k[:, span], cache.v[:, span]
            place_compact(dst_k, dst_v, (e.k, e.v), e.scales, e.kv_format, cos[i], sin[i], backend)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the device's queue (pinned, asynchronous copy on CUDA)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def ids_on_device(ids: Sequence[int], device: torch.device) -> torch.Tensor:
    """A prompt's token ids (a list of Python ints) as an int64 tensor on `device`. Through numpy: torch.tensor
    converts a list element by element, several times slower at a long prompt's length (every fused request
    pays it before its first token), and its copy to the GPU would wait for the device's queue."""
    return to_device(torch.from_numpy(np.fromiter(ids, dtype=np.int64, count=len(ids))), device)


def build_context(
    model: TransformerModel,
    cache: KVCache,
    token_ids: torch.Tensor,
    chunks: list[PlacedChunk],
    reused_prefix: int = 0,
    backend: str = "never",
    graphs: GraphCache | None = None,
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
    parts = (positions[is_chunk], fresh, fresh[fresh >= last_chunk_end])
    on_device = to_device(torch.cat(parts), token_ids.device).split([p.numel() for p in parts])  # one copy
    return FusionContext(
        model=model,
        cache=cache,
        token_ids=token_ids,
        chunks=chunks,
        chunk_positions=on_device[0],
        fresh_positions=on_device[1],
        question_positions=on_device[2],
        reused_prefix=reused_prefix,
        last_fresh_position=int(fresh[-1]) if fresh.numel() else -1,
        backend=backend,
        graphs=graphs,
    )


def active_positions(ctx: FusionContext, selected: torch.Tensor) -> torch.Tensor:
    """Fresh + selected + the last prompt position (its logits are the output), sorted and unique.

    Selected positions are chunk positions, never fresh ones: when the prompt ends with a fresh
    token (the usual question), the union is a sort, with no device sync."""
    selected = selected.to(ctx.fresh_positions.device)
    if ctx.last_fresh_position == ctx.num_positions - 1:
        return torch.sort(torch.cat((ctx.fresh_positions, selected))).values
    last = torch.tensor([ctx.num_positions - 1], device=ctx.fresh_positions.device)
    return torch.unique(torch.cat((ctx.fresh_positions, selected, last)))
