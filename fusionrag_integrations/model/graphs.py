"""CUDA graphs of the launch-bound passes: the decode step, the selection probe and a short recompute.

Decoding one token, probing ~80 question tokens or recomputing a few hundred positions (a fused
prefill that keeps most chunk tokens) is little GPU work but ~11-25 small kernel launches a layer,
so eager they run at the host's pace (benchmarks/launch_overhead.py); a graph replays the whole pass
with one launch. A graph replays fixed shapes and addresses, so a graphed pass differs from the eager one:
- its inputs live in device buffers overwritten before each replay (the probe's and the recompute's
  tokens padded to a multiple of BUCKET by repeating the last one: same token, same position, same
  K/V row, the same output for the last row);
- attention reads the cache at its full capacity through the sparse-query kernel, which stops at
  each query's position read from device memory (rows past the prompt are never touched);
- a graph is recorded over one cache's buffers and serves every cache with the same layout
  (`KVCache.layout`), which the caching allocator gives each same-sized request; the runner rounds
  cache sizes up to CACHE_GRANULE tokens so that prompts of similar length share one.
A decode layout is captured on its first request (its first step runs eagerly: the warm-up, and
its answer); a probe or recompute layout on its second sighting (a one-off prompt never pays for a
capture). A recompute is graphed up to RECOMPUTE_MAX positions: beyond, its GEMMs keep the GPU busy
and launches cost nothing.
Each runner owns its graphs (no process-wide registry); the MAX_GRAPHS most recent per kind stay.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..kernels import _dispatch
from ..kernels.sparse_attention import TRITON_HEAD_DIMS
from ..lru import LRU
from .attention import AttentionMode, CacheAttention, KVCache
from .forward import run_layers
from .transformer import TransformerModel

BUCKET = 16
CACHE_GRANULE = 1024  # tokens; at most ~130 MB of extra KV a request for an 8B model
MAX_GRAPHS = 4  # per kind: the most recently used layouts
RECOMPUTE_MAX = 256  # positions: a longer recompute pass is GPU-bound


def graph_friendly_capacity(needed: int, limit: int) -> int:
    """A cache size for `needed` tokens rounded up to CACHE_GRANULE (not past `limit`, unless
    `needed` is): similar requests then get the same buffers back, and with them the same graph."""
    return max(needed, min(-(-needed // CACHE_GRANULE) * CACHE_GRANULE, limit))


def warm_up_and_capture(
    run: Callable[[], torch.Tensor], device: torch.device, what: str
) -> tuple[torch.Tensor, torch.cuda.CUDAGraph | None, torch.Tensor | None]:
    """-> (first result, graph, the graph's output buffer).

    `run` goes once eagerly on a side stream (it compiles and autotunes the kernels for these
    shapes, which a capture may not) and that result is the caller's answer; then it is recorded.
    thread_local: other threads' CUDA work (a vector store precomputing chunks) may go on
    meanwhile. A capture that fails warns once and returns (first, None, None): the caller stays eager.
    """
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        first = run().clone()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = run()
    except RuntimeError as err:
        _dispatch.warn_once(f"CUDA graph capture of the {what} failed, running it eagerly: {err}")
        return first, None, None
    return first, graph, output


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph | None  # None: not captured (yet), or the capture failed: run eagerly
    ids: torch.Tensor  # static inputs, overwritten before each replay
    positions: torch.Tensor
    output: torch.Tensor | None = None  # static output: decode logits [V] or the probed layer's queries


class GraphCache:
    """One runner's graphs, by (kind, layout). `decode` / `probe`: whether that pass is graphed."""

    def __init__(
        self, model: TransformerModel, backend: str, decode: bool, probe: bool, recompute: bool = True
    ) -> None:
        self.model, self.backend = model, backend
        possible = (
            model.device.type == "cuda"
            and model.config.head_dim in TRITON_HEAD_DIMS
            and backend != "never"
            and _dispatch.triton_available()
        )
        self.decode, self.probe, self.recompute = possible and decode, possible and probe, possible and recompute
        self._graphs: LRU[tuple, Captured | None] = LRU(max_entries=3 * MAX_GRAPHS)
        self._lock = threading.Lock()
        self.replays: Counter[str] = Counter()  # per kind: passes served from a graph

    def get(self, key: tuple) -> Captured | None:
        with self._lock:
            return self._graphs.get(key)

    def put(self, key: tuple, captured: Captured | None) -> None:
        with self._lock:
            self._graphs.put(key, captured)

    def seen(self, key: tuple) -> bool:
        with self._lock:
            return key in self._graphs

    def run_to_capacity(
        self, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor, **loop: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loop as graphs record it: positions from device memory, keys read to the cache's end."""
        attention = CacheAttention(cache, AttentionMode.BY_POSITION, cache.capacity - 1, self.backend)
        return run_layers(self.model, ids, positions, attention, **loop)

    @torch.inference_mode()
    def probe_queries(
        self, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor, num_layers: int
    ) -> torch.Tensor | None:
        """The queries of layer num_layers - 1 for tokens `ids` at sorted `positions` ([n, Hq, D]),
        their K/V written into `cache` at every layer below; None: run the probe eagerly this time."""

        def run(captured: Captured) -> torch.Tensor:
            out: list[torch.Tensor] = []
            keep = lambda layer, q, _: out.append(q) if layer == num_layers - 1 else None  # noqa: E731
            self.run_to_capacity(
                cache, captured.ids, captured.positions, after_write=keep, num_layers=num_layers, finish_last=False
            )
            return out[0]

        out = self._replayed(("probe", num_layers), cache, ids, positions, run, "selection probe")
        return None if out is None else out[: int(positions.numel())]

    @torch.inference_mode()
    def recompute_last(self, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """The final hidden state [1, hidden] of the last of tokens `ids` at sorted `positions` after a pass
        through every layer over `cache` (every token's K/V written); None: run the pass eagerly."""
        if not self.recompute or int(positions.numel()) > RECOMPUTE_MAX:
            return None

        def run(captured: Captured) -> torch.Tensor:  # every row to the end: attend_last reads to max_position
            h, _ = self.run_to_capacity(cache, captured.ids, captured.positions)
            return h[-1:]

        return self._replayed(("recompute",), cache, ids, positions, run, "recompute pass")

    def _replayed(
        self,
        kind: tuple,
        cache: KVCache,
        ids: torch.Tensor,
        positions: torch.Tensor,
        run: Callable[[Captured], torch.Tensor],
        what: str,
    ) -> torch.Tensor | None:
        """`run` over the tokens padded to a BUCKET multiple (the last one repeated): replayed from the graph
        of this layout, captured now on its second sighting, or None on its first."""
        n = int(positions.numel())
        bucket = -(-n // BUCKET) * BUCKET
        key = (*kind, bucket, *cache.layout())
        if not self.seen(key):
            self.put(key, None)
            return None
        found = self.get(key)
        first_time = found is None
        captured = found or Captured(None, ids.new_empty(bucket), positions.new_empty(bucket))
        if first_time:
            self.put(key, captured)
        captured.ids[:n], captured.positions[:n] = ids, positions
        captured.ids[n:], captured.positions[n:] = ids[-1:], positions[-1:]
        if first_time:
            first, captured.graph, captured.output = warm_up_and_capture(lambda: run(captured), self.model.device, what)
            return first
        if captured.graph is None or captured.output is None:
            return run(captured)
        captured.graph.replay()
        self.replays[kind[0]] += 1
        return captured.output
