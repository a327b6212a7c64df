"""One decode step, eager or replayed from a CUDA graph (graphs.py says how a graphed pass differs)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..model.attention import AttentionMode, KVCache
from ..model.graphs import Captured, GraphCache, warm_up_and_capture
from ..model.transformer import TransformerModel

DecodeStep = Callable[[int, int], torch.Tensor]  # (token, position) -> logits [V]


def make_decode_step(model: TransformerModel, cache: KVCache, graphs: GraphCache | None, backend: str) -> DecodeStep:
    """The step decode_loop calls per token: graphed when the runner's graphs allow it, else eager."""
    if graphs is not None and graphs.decode:
        return GraphedDecodeStep(graphs, cache)
    return EagerDecodeStep(model, cache, backend)


class EagerDecodeStep:
    def __init__(self, model: TransformerModel, cache: KVCache, backend: str = "never") -> None:
        self.model, self.cache, self.backend = model, cache, backend

    def __call__(self, token: int, position: int) -> torch.Tensor:
        device = self.model.device
        step, pos = torch.tensor([token], device=device), torch.tensor([position], device=device)
        return self.model.forward(step, pos, self.cache, AttentionMode.DECODE, position, backend=self.backend)[-1]


class GraphedDecodeStep:
    def __init__(self, graphs: GraphCache, cache: KVCache) -> None:
        self.graphs, self.cache = graphs, cache
        self.key = ("decode", *cache.layout())
        self.captured = graphs.get(self.key)  # recorded by an earlier request over the same buffers
        self.reused = self.captured is not None
        self.eager: EagerDecodeStep | None = None  # set when capture fails

    def _step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        h, _ = self.graphs.run_to_capacity(self.cache, token, position)
        return self.graphs.model.logits(h)[-1]

    @torch.inference_mode()
    def __call__(self, token: int, position: int) -> torch.Tensor:
        if self.eager is not None:
            return self.eager(token, position)
        if self.captured is None:
            return self._warm_up_and_capture(token, position)
        assert self.captured.graph is not None and self.captured.output is not None  # only captured steps are kept
        self.captured.ids.fill_(token)
        self.captured.positions.fill_(position)
        self.captured.graph.replay()
        return self.captured.output

    def _warm_up_and_capture(self, token: int, position: int) -> torch.Tensor:
        """This step runs eagerly (its answer), then is recorded and shared with later requests
        over the same buffers; a failed capture leaves this request on the eager step."""
        model = self.graphs.model
        step, pos = torch.tensor([token], device=model.device), torch.tensor([position], device=model.device)
        first, graph, logits = warm_up_and_capture(lambda: self._step(step, pos), model.device, "decode step")
        if graph is None:
            self.eager = EagerDecodeStep(model, self.cache, self.graphs.backend)
            return first
        self.captured = Captured(graph, step, pos, logits)
        self.graphs.put(self.key, self.captured)
        return first
