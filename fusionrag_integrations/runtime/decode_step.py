"""One decode step, eager or replayed from a CUDA graph.

Decoding one token runs ~25 small kernels per layer; on a GPU the Python launch overhead,
not the weight reads, sets the pace (an 8B model: ~17 ms a token eager against ~5 ms of
memory traffic). A CUDA graph records the whole step once and replays it with one launch.

A graph replays fixed shapes and addresses, so the captured step differs from the eager one
in two ways: the token and its position live in device buffers that each step overwrites,
and attention reads the cache at its full capacity through the sparse-query kernel, which
stops at the query's position read from device memory (keys past it are never touched).
A graph is recorded over one cache's buffers and serves every cache with the same layout
(addresses, shape: `KVCache.layout`), which the caching allocator gives each same-sized
request (the engine rounds cache sizes up for that). So the first request of a layout
captures on its first step (that step runs eagerly first: the warm-up, and its answer), and
later requests replay at once; the MAX_GRAPHS most recently used graphs are kept per model.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..kernels.sparse_attention import sparse_query_attention
from ..model.transformer import AttentionMode, KVCache, TransformerModel
from .cuda_graphs import MAX_GRAPHS, can_graph, warm_up_and_capture

DecodeStep = Callable[[int, int], torch.Tensor]  # (token, position) -> logits [V]


def make_decode_step(model: TransformerModel, cache: KVCache, cuda_graph: bool) -> DecodeStep:
    """The step decode_loop calls per token: graphed when asked for and possible, else eager."""
    if cuda_graph and can_graph(model):
        return GraphedDecodeStep(model, cache)
    return EagerDecodeStep(model, cache)


class EagerDecodeStep:
    def __init__(self, model: TransformerModel, cache: KVCache) -> None:
        self.model, self.cache = model, cache

    def __call__(self, token: int, position: int) -> torch.Tensor:
        device = self.model.device
        step = torch.tensor([token], device=device)
        pos = torch.tensor([position], device=device)
        return self.model.forward(step, pos, self.cache, AttentionMode.DECODE, position)[-1]


@dataclass
class _CapturedStep:
    graph: torch.cuda.CUDAGraph
    token: torch.Tensor  # [1] static inputs, overwritten before each replay
    position: torch.Tensor
    logits: torch.Tensor  # [V] static output


_GRAPHS: weakref.WeakKeyDictionary[TransformerModel, OrderedDict[tuple, _CapturedStep]] = weakref.WeakKeyDictionary()
_GRAPHS_LOCK = threading.Lock()


class GraphedDecodeStep:
    def __init__(self, model: TransformerModel, cache: KVCache) -> None:
        self.model, self.cache = model, cache
        self.layout = cache.layout()
        with _GRAPHS_LOCK:
            graphs = _GRAPHS.setdefault(model, OrderedDict())
            self.captured = graphs.get(self.layout)  # recorded by an earlier request over the same buffers
            if self.captured is not None:
                graphs.move_to_end(self.layout)
        self.reused = self.captured is not None
        self.eager: EagerDecodeStep | None = None  # set when capture fails

    @torch.inference_mode()
    def _step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        model, cache = self.model, self.cache
        h = model.embed(token)
        cos, sin = model.rotary(position)
        for layer in range(model.config.num_layers):
            q, k, v = model.qkv(layer, h, cos, sin)
            cache.write(layer, position, None, k, v)
            attn = sparse_query_attention(
                q, cache.k[layer], cache.v[layer], position, backend="always", positions_sorted=True
            )
            h = model.finish_layer(layer, h, attn)
        return model.logits(h)[-1]

    @torch.inference_mode()
    def __call__(self, token: int, position: int) -> torch.Tensor:
        if self.eager is not None:
            return self.eager(token, position)
        if self.captured is None:
            return self._warm_up_and_capture(token, position)
        self.captured.token.fill_(token)
        self.captured.position.fill_(position)
        self.captured.graph.replay()
        return self.captured.logits

    def _warm_up_and_capture(self, token: int, position: int) -> torch.Tensor:
        """This step runs eagerly (its answer), then is recorded and shared with later requests
        over the same buffers; a failed capture leaves this request on the eager step."""
        device = self.model.device
        step = torch.tensor([token], device=device)
        pos = torch.tensor([position], device=device)
        first, graph, logits = warm_up_and_capture(lambda: self._step(step, pos), device, "decode step")
        if graph is None:
            self.eager = EagerDecodeStep(self.model, self.cache)
            return first
        self.captured = _CapturedStep(graph, step, pos, logits)
        with _GRAPHS_LOCK:
            graphs = _GRAPHS.setdefault(self.model, OrderedDict())
            graphs[self.layout] = self.captured
            while len(graphs) > MAX_GRAPHS:
                graphs.popitem(last=False)
        return first
