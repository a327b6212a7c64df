"""Where keys and values are written and how queries attend to them: the one place the attention
kernel is chosen.

A forward pass writes each layer's fresh K/V somewhere and attends over it. Which "somewhere" and
which kernel depends on the pass, so each pass names its attention once and the layer loop
(forward.py) stays the same for all of them:
- `CacheAttention(CAUSAL_FROM_ZERO)`: a plain prefill from position 0 (causal flash SDPA);
- `CacheAttention(DECODE)`: one query at the last position, it sees every cached key;
- `CacheAttention(BY_POSITION)`: any subset of positions (fused recompute, the selection probe, a
  graphed decode step), each query seeing the keys at positions <= its own (sparse-query kernel);
- `PrefixBatchAttention`: a right-padded batch of chunks after one shared prefix (precompute).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F

from ..kernels import _dispatch, batch_decode
from ..kernels.cache_table import CacheTable
from ..kernels.dense_attention import sdpa
from ..kernels.sparse_attention import sparse_query_attention
from .config import ModelConfig


class AttentionMode(Enum):
    CAUSAL_FROM_ZERO = "causal"  # positions 0..S-1, nothing earlier in the cache: plain causal SDPA
    DECODE = "decode"  # one query at the last position: it sees every cached key
    BY_POSITION = "by_position"  # anything else: query i sees keys at positions <= positions[i]


def resolve_kernels(choice: str, device: torch.device) -> str:
    """EngineConfig.use_triton -> the backend the kernels get: Triton on CUDA per `choice`; on CPU the
    interpreted kernels are for kernel tests (choice "always"), not serving."""
    return choice if (device.type == "cuda" or choice == "always") else "never"


class KVCache:
    """Per-request K/V for every layer, indexed by absolute position: row p holds position p."""

    def __init__(self, config: ModelConfig, capacity: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (config.num_layers, capacity, config.num_kv_heads, config.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)  # [L, capacity, Hkv, D]
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.capacity = capacity

    def layout(self) -> tuple:
        """The buffers' addresses, shape and dtype: a CUDA graph recorded over this cache serves any
        cache with the same layout (the caching allocator hands same-sized requests the same buffers)."""
        return (self.k.data_ptr(), self.v.data_ptr(), tuple(self.k.shape), self.k.dtype)

    def write(self, layer: int, positions: torch.Tensor, start: int | None, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [S, Hkv, D]. `start` given means positions == start..start+S-1 (a slice copy)."""
        if start is not None:
            self.k[layer, start : start + k.shape[0]] = k
            self.v[layer, start : start + v.shape[0]] = v
        else:
            self.k[layer].index_copy_(0, positions, k)
            self.v[layer].index_copy_(0, positions, v)


@dataclass
class CacheAttention:
    """Attention over a request's KVCache. max_position: the largest position any query has (a host
    int: reading it from the device would wait for the GPU); keys past it are never read."""

    cache: KVCache
    mode: AttentionMode
    max_position: int
    backend: str = "never"  # resolve_kernels(...)
    start: int | None = field(init=False)
    output_rows = slice(-1, None)  # with last_row_only: the last query's output alone

    def __post_init__(self) -> None:
        contiguous = self.mode is not AttentionMode.BY_POSITION  # written with a slice copy
        self.start = self.max_position + 1 if contiguous else None

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        start = None if self.start is None else self.start - k.shape[0]
        self.cache.write(layer, positions, start, k, v)

    def attend(
        self, layer: int, q: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q: [S, Hq, D] -> [S, Hq, D]; k, v: this layer's fresh rows (used by the causal prefill)."""
        if self.mode is AttentionMode.CAUSAL_FROM_ZERO:
            return sdpa(q, k, v, causal=True)
        if self.mode is AttentionMode.DECODE:
            return self.attend_last(layer, q)
        keys, values = self.cache.k[layer, : self.max_position + 1], self.cache.v[layer, : self.max_position + 1]
        return sparse_query_attention(q, keys, values, positions, backend=self.backend, positions_sorted=True)

    def attend_last(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """One query at max_position: it sees every key up to it."""
        end = self.max_position + 1
        return sdpa(q, self.cache.k[layer, :end], self.cache.v[layer, :end], causal=False)


class PrefixBatchAttention:
    """B chunks of up to T tokens (right-padded) after one shared prefix whose K/V are given: query i of
    a chunk sees the whole prefix and that chunk's keys 0..i; padding sits after every real token, so
    no real token sees it. Fresh K/V are kept per layer in `k`, `v` ([L, B, T, Hkv, D])."""

    def __init__(self, prefix: tuple[torch.Tensor, torch.Tensor], config: ModelConfig, batch: int, length: int) -> None:
        self.prefix_k, self.prefix_v = prefix  # [L, P, Hkv, D]
        self.batch, self.length, self.config = batch, length, config
        shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
        self.k = torch.empty(shape, device=self.prefix_k.device, dtype=self.prefix_k.dtype)
        self.v = torch.empty_like(self.k)
        P = self.prefix_k.shape[1]
        self.mask = torch.ones(length, P + length, dtype=torch.bool, device=self.k.device).tril(diagonal=P)
        self.backend = "never"

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer] = k.view(self.batch, self.length, *k.shape[1:])
        self.v[layer] = v.view(self.batch, self.length, *v.shape[1:])

    def attend(
        self, layer: int, q: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        B, T, c = self.batch, self.length, self.config
        keys = torch.cat((self.prefix_k[layer].expand(B, -1, -1, -1), self.k[layer]), dim=1)  # [B, P+T, Hkv, D]
        values = torch.cat((self.prefix_v[layer].expand(B, -1, -1, -1), self.v[layer]), dim=1)
        out = F.scaled_dot_product_attention(
            q.view(B, T, c.num_heads, c.head_dim).transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=self.mask,
            enable_gqa=True,
        )  # [B, Hq, T, D]
        return out.transpose(1, 2).reshape(B * T, c.num_heads, c.head_dim)


class BatchDecodeAttention:
    """One new token per request, each request with its own cache (continuous batching's decode step):
    row i is written at positions[i] of caches[i] and attends to that cache up to it. The GEMMs around
    it run on all rows at once; attention is per request (kernels/batch_decode.py): one Triton launch
    for every row where Triton runs, else an SDPA per row, exactly what the row computes alone."""

    def __init__(
        self, caches: list[KVCache], positions: list[int], backend: str = "never", table: CacheTable | None = None
    ) -> None:
        """table: a prepared CacheTable (a CUDA graph's static input); else one is built for the kernel
        where Triton runs."""
        self.caches, self.positions, self.backend, self.table = caches, positions, backend, table
        if table is None and _dispatch.use_triton(caches[0].k, backend) and batch_decode.triton_supports(caches[0].k):
            self.table = CacheTable.of([c.k for c in caches], [c.v for c in caches], positions)

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Done inside attend (the kernel writes each fresh row as it attends to it)."""

    def attend(
        self, layer: int, q: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        if self.table is not None:
            return batch_decode.batch_decode_attention(q, k, v, self.table, layer)
        keys, values = [c.k[layer] for c in self.caches], [c.v[layer] for c in self.caches]
        return batch_decode.batch_decode_attention_ref(q, k, v, keys, values, self.positions)
