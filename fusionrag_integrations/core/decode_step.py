"""One decode step, eager or replayed from a CUDA graph.

Decoding one token runs ~25 small kernels per layer; on a GPU the Python launch overhead,
not the weight reads, sets the pace (an 8B model: ~17 ms a token eager against ~5 ms of
memory traffic). A CUDA graph records the whole step once and replays it with one launch.

A graph replays fixed shapes and addresses, so the captured step differs from the eager one
in two ways: the token and its position live in device buffers that each step overwrites,
and attention reads the cache at its full capacity through the sparse-query kernel, which
stops at the query's position read from device memory (keys past it are never touched).
The graph belongs to one KV cache (one request): it is captured on the first step, which
also serves as the warm-up run, and replayed for the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..kernels import _dispatch
from ..kernels.sparse_attention import sparse_query_attention
from .model import AttentionMode, KVCache, TransformerModel

DecodeStep = Callable[[int, int], torch.Tensor]  # (token, position) -> logits [V]

GRAPH_HEAD_DIMS = (64, 128)  # the Triton kernel's head sizes; others would fall back to the reference


def can_graph(model: TransformerModel) -> bool:
    return (
        model.device.type == "cuda"
        and model.config.head_dim in GRAPH_HEAD_DIMS
        and model.kernel_backend(torch.empty(0, device=model.device)) != "never"
        and _dispatch.triton_available()
    )


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


class GraphedDecodeStep:
    def __init__(self, model: TransformerModel, cache: KVCache) -> None:
        self.model, self.cache = model, cache
        self.token = torch.zeros(1, dtype=torch.long, device=model.device)
        self.position = torch.zeros(1, dtype=torch.long, device=model.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.eager: EagerDecodeStep | None = None  # set when capture fails

    @torch.inference_mode()
    def _step(self) -> torch.Tensor:
        model, cache = self.model, self.cache
        h = model.embed(self.token)
        cos, sin = model.rotary(self.position)
        for layer in range(model.config.num_layers):
            q, k, v = model.qkv(layer, h, cos, sin)
            cache.write(layer, self.position, None, k, v)
            attn = sparse_query_attention(
                q, cache.k[layer], cache.v[layer], self.position, backend="always", positions_sorted=True
            )
            h = model.finish_layer(layer, h, attn)
        return model.logits(h)[-1]

    @torch.inference_mode()
    def __call__(self, token: int, position: int) -> torch.Tensor:
        self.token.fill_(token)
        self.position.fill_(position)
        if self.graph is None:
            # the first step runs eagerly on a side stream (warm-up: autotuning, cuBLAS workspaces)
            # and is this step's answer; the capture after it only records
            stream = torch.cuda.Stream(device=self.model.device)
            stream.wait_stream(torch.cuda.current_stream(self.model.device))
            with torch.cuda.stream(stream):
                first = self._step().clone()
            torch.cuda.current_stream(self.model.device).wait_stream(stream)
            self._capture()
            return first
        if self.eager is not None:
            return self.eager(token, position)
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        """Record the step. thread_local: CUDA work of other threads (a vector store precomputing
        chunks) may go on meanwhile. A capture that fails leaves this request on the eager step."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.logits = self._step()
        except RuntimeError as err:
            _dispatch.warn_once(f"CUDA graph capture of the decode step failed, decoding eagerly: {err}")
            self.eager = EagerDecodeStep(self.model, self.cache)
        self.graph = graph
