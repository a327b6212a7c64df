"""The selection probe, replayed from a CUDA graph.

FusionRAG's probe runs the fresh tokens (instruction and question, ~80) through the layers
over the fused cache to read the question's last-layer attention. That is little GPU work
(~0.27 ms a layer for an 8B model) but ~11 launches a layer, which take 0.4-0.8 ms of host
time depending on the host (benchmarks/launch_overhead.py): eager, the probe runs at the
host's pace, 1.5-3x its GPU time. A CUDA graph replays the whole pass with one launch.

A graph replays fixed shapes and addresses, so the graphed probe differs from the eager one:
- the fresh tokens are padded to a multiple of BUCKET by repeating the last one (same token,
  same position: it rewrites that token's K/V row with the same values; its query is dropped);
- attention reads the cache at its full capacity (the Triton kernel stops at each query's
  position, read from device memory, so rows past the prompt are never touched);
- the cache is named by its buffers' addresses: a graph serves any cache whose K and V
  buffers sit at the same addresses with the same shape, which is what the caching
  allocator hands back to each request of the same size.
A layout is captured the second time it is seen (a one-off layout never pays for a capture);
the MAX_GRAPHS most recent graphs are kept. The engine rounds each request's cache up to a
multiple of CACHE_GRANULE tokens so that prompts of similar length share one layout.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..fusion.recompute import run_layers
from ..model.transformer import KVCache, TransformerModel
from .cuda_graphs import MAX_GRAPHS, can_graph, warm_up_and_capture

BUCKET = 16
CACHE_GRANULE = 1024  # tokens; at most ~130 MB of extra KV a request for an 8B model


def graph_friendly_capacity(needed: int, limit: int) -> int:
    """A cache size for `needed` tokens rounded up to CACHE_GRANULE (not past `limit`, unless
    `needed` is): similar requests then get the same buffers back, and with them the same graph."""
    return max(needed, min(-(-needed // CACHE_GRANULE) * CACHE_GRANULE, limit))


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph | None  # None: capture failed, this layout runs eagerly
    ids: torch.Tensor  # [bucket] static inputs, overwritten before each replay
    positions: torch.Tensor
    queries: torch.Tensor | None = None  # [bucket, Hq, D] static output: the probed layer's queries


class ProbeGraphs:
    """The graphed probes of one model, by layout (bucket, depth, cache buffers). Holds no
    reference to the model (it is the key of the weak registry below)."""

    def __init__(self) -> None:
        self.layouts: OrderedDict[tuple, _Captured | None] = OrderedDict()  # None: seen once, not captured

    @torch.inference_mode()
    def queries(
        self, model: TransformerModel, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor, num_layers: int
    ) -> torch.Tensor | None:
        """The queries of layer num_layers - 1 for tokens `ids` at sorted `positions` ([n, Hq, D]),
        their K/V written into `cache` at every layer below; None: run the probe eagerly this time."""
        n = int(positions.numel())
        bucket = -(-n // BUCKET) * BUCKET
        key = (bucket, num_layers, *cache.layout())
        if key not in self.layouts:
            self.layouts[key] = None
            self._evict()
            return None
        self.layouts.move_to_end(key)
        captured = self.layouts[key]
        if captured is None:
            captured = _Captured(None, ids.new_empty(bucket), positions.new_empty(bucket))
            self.layouts[key] = captured
            _fill(captured, ids, positions)
            first = self._warm_up_and_capture(model, captured, cache, num_layers)
            return first[:n]
        _fill(captured, ids, positions)
        if captured.graph is None:
            return self._run(model, captured, cache, num_layers)[:n]
        captured.graph.replay()
        return captured.queries[:n]

    def _run(self, model: TransformerModel, captured: _Captured, cache: KVCache, num_layers: int) -> torch.Tensor:
        out: list[torch.Tensor] = []
        run_layers(
            model,
            cache,
            captured.ids,
            captured.positions,
            after_write=lambda layer, q, _: out.append(q) if layer == num_layers - 1 else None,
            num_layers=num_layers,
            finish_last=False,
            max_position=cache.capacity - 1,
        )
        return out[0]

    def _warm_up_and_capture(
        self, model: TransformerModel, captured: _Captured, cache: KVCache, num_layers: int
    ) -> torch.Tensor:
        first, captured.graph, captured.queries = warm_up_and_capture(
            lambda: self._run(model, captured, cache, num_layers), model.device, "selection probe"
        )
        return first

    def _evict(self) -> None:
        while len(self.layouts) > MAX_GRAPHS:
            self.layouts.popitem(last=False)


def _fill(captured: _Captured, ids: torch.Tensor, positions: torch.Tensor) -> None:
    """Static inputs: the tokens, then the last one repeated up to the bucket."""
    n = ids.numel()
    captured.ids[:n], captured.positions[:n] = ids, positions
    captured.ids[n:], captured.positions[n:] = ids[-1:], positions[-1:]


_GRAPHS: weakref.WeakKeyDictionary[TransformerModel, ProbeGraphs] = weakref.WeakKeyDictionary()


def probe_graphs(model: TransformerModel) -> ProbeGraphs | None:
    """The model's graphed probes, or None where graphs do not apply (CPU, no Triton kernel, turned off)."""
    if not (model.graph_probe and can_graph(model)):
        return None
    if model not in _GRAPHS:
        _GRAPHS[model] = ProbeGraphs()
    return _GRAPHS[model]
