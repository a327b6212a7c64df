"""The hybrid selector: the question's attention picks the tokens, measured KV deviation decides how many.

QCFuse's probe (the question run over the placed cache up to one critical layer) says which chunk
tokens the question reads; it cannot say how wrong a chunk's cached KV is here. CacheBlend's signal can:
a token's fresh K/V at an early layer vs its cached ones. Measuring that for every token costs two
full layers (5.3x instead of 6.1x at 16K on an H100), so a strided sample is measured instead (one
token in `deviation_stride`, each chunk's first token included), and the deviation is used where a
sample suffices: per chunk and per request. Three levers, each switchable so the quality harness can
price it alone:

- deviation budget: each chunk's share of the budget follows its deviation mass (length x mean
  deviation), not its length: a chunk whose KV was computed in a context like this one needs little.
- sink tokens: each chunk's first `sink_tokens` are recomputed inside its share (EPIC, CacheClip).
  sink_scope="context" (default) does so only for chunks whose KV was computed after other text
  (similarity-guided or seen in a prompt): there the first tokens carry the chunk's start-of-text
  attention pattern that its new context changes most, and recomputing them helped; over standalone
  KV it hurt (the budget is better spent where the question reads), so QCFuse's rule is left unchanged
  for those chunks (benchmarks/RESULTS.md, "Quality defaults").
- adaptive ratio: the request's budget follows where its deviation ranks among recent requests
  (DeviationReference), from ratio / 2 for the easiest to 1.5 ratio for the hardest: easy prompts
  recompute less, hard ones more, and the mean over a stream of requests stays at ratio.
"""

from __future__ import annotations

import threading
from collections import deque

import torch

from ..errors import InvalidArgumentError
from ..model.attention import AttentionMode, CacheAttention
from ..model.forward import run_layers
from ..store.chunk_kv import is_standalone
from .placement import FusionContext, ids_on_device, to_device
from .probe import default_critical_layer, probe_attention
from .selector_base import Selector, allocate_weighted, note_missed_attention


class DeviationReference:
    """Where a request's deviation ranks among the last `window` requests an engine fused.

    The adaptive ratio scales a request's budget by 1 + spread x (2 quantile - 1): the easiest request
    seen lately recomputes (1 - spread) x ratio, the hardest (1 + spread) x ratio. A quantile is uniform
    over a stationary stream, so the mean ratio stays the configured one whatever the deviations' scale
    (it differs by model, prompt format and precompute mode) and however heavy their tail; dividing by
    a running mean instead let a few hard requests pull the mean ratio 1.5x above the configured one."""

    def __init__(self, window: int = 256, spread: float = 0.5) -> None:
        self.spread = spread
        self.recent: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, deviation: float) -> float:
        """Add a request's deviation; returns its budget factor (1 for the first request)."""
        with self._lock:
            below = sum(x < deviation for x in self.recent) + 0.5 * sum(x == deviation for x in self.recent)
            quantile = (below + 0.5) / (len(self.recent) + 1)
            self.recent.append(deviation)
        return 1 + self.spread * (2 * quantile - 1)

    @property
    def count(self) -> int:
        return len(self.recent)


class _ReadOnlyCache(CacheAttention):
    """The placed cache, read by position and never written: measuring deviation leaves it as placed."""

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        return None


def chunk_deviation(ctx: FusionContext, layer: int = 1, stride: int = 8) -> list[float]:
    """Each chunk's mean relative K/V deviation at `layer`, from one token in `stride` (its first included).

    The sampled tokens run layers 0..layer over the placed cache (the fresh tokens' K/V must be in it:
    call after the probe). Layer 0's K/V do not depend on context, so their attention there reads
    exact keys and their layer-`layer` K/V are what a full prefill computes for layer 1 exactly.
    deviation = |fresh - cached|^2 / |cached|^2 over K and V, all heads."""
    starts, owner = [], []
    for i, c in enumerate(ctx.chunks):
        sampled = torch.arange(c.start, c.end, stride)
        starts.append(sampled)
        owner += [i] * sampled.numel()
    positions = torch.cat(starts)
    layer = min(layer, ctx.model.config.num_layers - 1)
    found: dict[str, torch.Tensor] = {}

    def before_write(at: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        if at == layer:
            old_k, old_v = ctx.cache.k[at, pos].float(), ctx.cache.v[at, pos].float()
            diff = ((k.float() - old_k) ** 2).sum(dim=(1, 2)) + ((v.float() - old_v) ** 2).sum(dim=(1, 2))
            found["deviation"] = diff / ((old_k**2).sum(dim=(1, 2)) + (old_v**2).sum(dim=(1, 2))).clamp_min(1e-12)
        return None

    device_positions = to_device(positions, ctx.token_ids.device)
    attention = _ReadOnlyCache(ctx.cache, AttentionMode.BY_POSITION, int(positions[-1]), ctx.backend)
    ids = ctx.token_ids[device_positions]
    run_layers(
        ctx.model, ids, device_positions, attention, before_write=before_write, num_layers=layer + 1, finish_last=False
    )
    owner_t = ids_on_device(owner, found["deviation"].device)  # ids of chunks: the same conversion
    sums = torch.zeros(len(ctx.chunks), device=owner_t.device).index_add_(0, owner_t, found["deviation"])
    counts = torch.bincount(owner_t, minlength=len(ctx.chunks)).clamp_min(1)
    return (sums / counts).tolist()  # one sync: the budget split is decided on the host


BUDGET_SPLITS = ("deviation", "length", "global")
SINK_SCOPES = ("context", "all")


class HybridSelector(Selector):
    """QCFuse's attention within each chunk, budgets by measured deviation, sink tokens, adaptive ratio.

    budget: how the request's budget is split over chunks: "deviation" (by deviation mass), "length",
    or "global" (no split: QCFuse's ranking over all chunk tokens, each chunk's sink still first).
    Within a chunk's share: its first `sink_tokens`, then `attention_share` of the rest by the
    question's attention at the critical layer, the remainder by key norm there (QCFuse's rule)."""

    name = "hybrid"
    attention_share = 0.75

    def __init__(
        self,
        critical_layer: int | None = None,
        sink_tokens: int = 2,
        adaptive: DeviationReference | None = None,
        budget: str = "deviation",
        check_layer: int = 1,
        deviation_stride: int = 8,
        sink_scope: str = "context",
    ) -> None:
        if budget not in BUDGET_SPLITS:
            raise InvalidArgumentError(f"hybrid budget split must be one of {BUDGET_SPLITS}, got {budget!r}")
        if sink_scope not in SINK_SCOPES:
            raise InvalidArgumentError(f"hybrid sink scope must be one of {SINK_SCOPES}, got {sink_scope!r}")
        self.critical_layer, self.sink_tokens, self.adaptive = critical_layer, sink_tokens, adaptive
        self.budget, self.check_layer, self.deviation_stride = budget, check_layer, deviation_stride
        self.sink_scope = sink_scope

    def sinks(self, ctx: FusionContext) -> list[int]:
        """Each chunk's sink tokens: `sink_tokens`, or 0 for standalone KV when the scope is "context"."""
        return [
            self.sink_tokens if self.sink_scope == "all" or not is_standalone(c.entry.context_id) else 0
            for c in ctx.chunks
        ]

    def select(self, ctx: FusionContext, budget: int) -> torch.Tensor:
        layer = self.critical_layer if self.critical_layer is not None else default_critical_layer(ctx.model)
        layer = min(layer, ctx.model.config.num_layers - 1)
        attention = probe_attention(ctx, ctx.model, ctx.cache, layers={layer}, full=False)[layer]
        lengths = [c.entry.num_tokens for c in ctx.chunks]
        weights: list[float] = [float(n) for n in lengths]
        if self.budget == "deviation" or self.adaptive is not None:
            deviation = chunk_deviation(ctx, self.check_layer, self.deviation_stride)
            if self.adaptive is not None:
                request = sum(n * d for n, d in zip(lengths, deviation)) / max(sum(lengths), 1)
                budget = min(round(budget * self.adaptive.observe(request)), sum(lengths))
            if self.budget == "deviation":
                weights = [n * d for n, d in zip(lengths, deviation)]
        key_norm = ctx.cache.k[layer, ctx.chunk_positions].float().norm(dim=-1).mean(dim=-1)
        if self.budget == "global":
            selected = pick_global(ctx, attention, key_norm, budget, self.sinks(ctx), self.attention_share)
        else:
            wants = allocate_weighted(lengths, weights, budget)
            selected = pick_within_chunks(ctx, attention, key_norm, wants, self.sinks(ctx), self.attention_share)
        return note_missed_attention(ctx, attention, selected)


def per_chunk(sink: int | list[int], ctx: FusionContext) -> list[int]:
    return [sink] * len(ctx.chunks) if isinstance(sink, int) else sink


def pick_global(
    ctx: FusionContext,
    attention: torch.Tensor,
    key_norm: torch.Tensor,
    budget: int,
    sink: int | list[int],
    share: float,
) -> torch.Tensor:
    """`budget` chunk positions: every chunk's first `sink` tokens (one count, or one per chunk), then
    round(share x the rest) by attention over all chunks (QCFuse's global rule), the remainder by key norm."""
    lengths = [c.entry.num_tokens for c in ctx.chunks]
    offsets = torch.cat([torch.arange(n) for n in lengths])
    host_sink = offsets < torch.repeat_interleave(torch.tensor(per_chunk(sink, ctx)), torch.tensor(lengths))
    is_sink = to_device(host_sink, attention.device)
    n_sink = min(int(host_sink.sum()), budget)
    n_attention = n_sink + round((budget - n_sink) * share)
    by_attention = torch.topk(attention.float().masked_fill(is_sink, float("inf")), n_attention).indices
    key_norm = key_norm.clone()
    key_norm[by_attention] = float("-inf")
    by_norm = torch.topk(key_norm, budget - n_attention).indices
    return torch.sort(ctx.chunk_positions[torch.cat((by_attention, by_norm))]).values


def pick_within_chunks(
    ctx: FusionContext,
    attention: torch.Tensor,
    key_norm: torch.Tensor,
    wants: list[int],
    sink: int | list[int],
    share: float,
) -> torch.Tensor:
    """`wants[c]` positions of each chunk c: its first min(sink[c], want) tokens, then round(share x the rest)
    by attention, the remainder by key norm (scores aligned with ctx.chunk_positions).

    All chunks at once, padded to [chunks, longest]: a loop of topk per chunk costs ~10 launches a chunk,
    a few ms at 32 chunks on a GPU. Counts are known on the host, so nothing waits for the device."""
    lengths = [c.entry.num_tokens for c in ctx.chunks]
    n_chunks, longest, device = len(lengths), max(lengths), attention.device
    rows = torch.repeat_interleave(torch.arange(n_chunks), torch.tensor(lengths))
    cols = torch.cat([torch.arange(n) for n in lengths])
    flat = to_device(rows * longest + cols, device)
    sinks = [min(s, w) for s, w in zip(per_chunk(sink, ctx), wants)]
    by_attention = [s + round((w - s) * share) for s, w in zip(sinks, wants)]

    def padded(scores: torch.Tensor) -> torch.Tensor:
        out = torch.full((n_chunks * longest,), float("-inf"), device=device)
        return out.index_put_((flat,), scores.float()).view(n_chunks, longest)

    def top(scores: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Per row, the `counts[row]` best columns, as a mask."""
        order = scores.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(longest, device=device).expand_as(order))
        return rank < to_device(torch.tensor(counts), device)[:, None]

    first = torch.arange(longest, device=device)[None, :] < to_device(torch.tensor(sinks), device)[:, None]
    att = padded(attention).masked_fill(first, float("inf"))  # the sink goes first
    chosen = top(att, by_attention)
    norm = padded(key_norm).masked_fill(chosen, float("-inf"))
    chosen |= top(norm, [w - a for w, a in zip(wants, by_attention)])
    starts = to_device(torch.tensor([c.start for c in ctx.chunks]), device)
    positions = starts[:, None] + torch.arange(longest, device=device)[None, :]
    total = sum(wants)  # known on the host: the True entries come first in a stable sort of ~mask
    taken = torch.argsort((~chosen).flatten().to(torch.int8), stable=True)[:total]
    return torch.sort(positions.flatten()[taken]).values
