"""Continuous batching's decode step: the next token of every running request in one forward, eager or
replayed from a CUDA graph.

Eager, a step of B rows is ~15 kernel launches a layer whatever B is: at 8B scale the host, not the
GPU, sets the pace (a 4-row eager step takes about twice the graphed single-request step). A graph
replays fixed shapes and addresses, so a graphed batch step differs from the eager one:
- rows are padded to a bucket of ROW_BUCKETS; padding rows decode token 0 at position 0 of a one-token
  scratch cache (their output is dropped);
- the requests' caches are reached through a `CacheTable` of offsets from the scratch cache, a static
  input refilled before each replay, so one graph serves any set of requests;
- the kernel's key splits are fixed per graph by a power-of-two bound on the longest cache
  (key_bucket), so a graph serves every step whose longest row is within it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.cache_table import CacheTable
from ..lru import LRU
from ..model.attention import BatchDecodeAttention, KVCache
from ..model.forward import run_layers
from ..model.graphs import GraphCache, warm_up_and_capture
from ..model.transformer import TransformerModel

ROW_BUCKETS = (2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
MIN_KEY_BUCKET = 1024
MAX_BATCH_GRAPHS = 24


@dataclass
class BatchCaptured:
    graph: torch.cuda.CUDAGraph | None  # None: the capture failed, this shape runs eagerly
    table: CacheTable  # static inputs: where each row's cache is, its position
    ids: torch.Tensor
    output: torch.Tensor | None


def key_bucket(max_keys: int) -> int:
    return max(MIN_KEY_BUCKET, 1 << (max_keys - 1).bit_length())


class BatchDecodeStep:
    def __init__(self, model: TransformerModel, graphs: GraphCache, backend: str) -> None:
        self.model, self.backend = model, backend
        self.graphed = graphs.decode  # CUDA, Triton and a supported head dim (graphs.py)
        self.scratch = model.new_cache(1) if self.graphed else None
        self._graphs: LRU[tuple[int, int], BatchCaptured] = LRU(max_entries=MAX_BATCH_GRAPHS)
        self.replays = 0  # steps served from a graph (tests and benchmarks read it)

    @torch.inference_mode()
    def __call__(self, caches: list[KVCache], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Logits [B, V]: row i is tokens[i] at positions[i] of caches[i]."""
        rows = next((b for b in ROW_BUCKETS if b >= len(tokens)), None)
        if not self.graphed or rows is None:
            return self._eager(caches, tokens, positions)
        keys = key_bucket(max(positions) + 1)
        captured = self._graphs.get((rows, keys))
        if captured is None:
            return self._capture(rows, keys, caches, tokens, positions)
        if captured.graph is None:
            return self._eager(caches, tokens, positions)
        self._fill(captured, caches, tokens, positions)
        captured.graph.replay()
        self.replays += 1
        assert captured.output is not None  # recorded with its graph
        return captured.output[: len(tokens)]

    def _eager(self, caches: list[KVCache], tokens: list[int], positions: list[int]) -> torch.Tensor:
        device = self.model.device
        attention = BatchDecodeAttention(caches, positions, self.backend)
        ids, pos = torch.tensor(tokens, device=device), torch.tensor(positions, device=device)
        h, _ = run_layers(self.model, ids, pos, attention)
        return self.model.logits(h)

    def _fill(self, captured: BatchCaptured, caches: list[KVCache], tokens: list[int], positions: list[int]) -> None:
        pad, scratch = captured.ids.numel() - len(tokens), self._scratch()
        k = [c.k for c in caches] + [scratch.k] * pad
        v = [c.v for c in caches] + [scratch.v] * pad
        captured.table.fill(k, v, positions + [0] * pad)
        captured.ids.copy_(torch.tensor(tokens + [0] * pad))

    def _scratch(self) -> KVCache:
        assert self.scratch is not None  # exists whenever steps are graphed
        return self.scratch

    def _capture(
        self, rows: int, keys: int, caches: list[KVCache], tokens: list[int], positions: list[int]
    ) -> torch.Tensor:
        """The first step of this shape runs eagerly over the static inputs (its answer), then is recorded."""
        from ..kernels.batch_decode_triton import _sm_count, plan_splits

        c, device = self.model.config, self.model.device
        table = CacheTable(self._scratch().k, c.num_layers, rows)
        table.max_keys = keys
        table.keys_per_split = plan_splits(rows, c.num_kv_heads, keys, _sm_count(device), 64)
        captured = BatchCaptured(None, table, torch.zeros(rows, dtype=torch.int64, device=device), None)
        self._fill(captured, caches, tokens, positions)

        def run() -> torch.Tensor:
            attention = BatchDecodeAttention([], [], self.backend, table=table)
            h, _ = run_layers(self.model, captured.ids, table.positions, attention)
            return self.model.logits(h)

        first, captured.graph, captured.output = warm_up_and_capture(run, device, "batched decode step")
        self._graphs.put((rows, keys), captured)
        return first[: len(tokens)]
