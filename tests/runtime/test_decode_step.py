"""The decode step: eager on CPU, replayed from a CUDA graph on the GPU, same logits either way."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.model.attention import AttentionMode, resolve_kernels
from fusionrag_integrations.model.graphs import GraphCache
from fusionrag_integrations.runtime.decode_step import EagerDecodeStep, GraphedDecodeStep, make_decode_step
from tests.conftest import tiny_llama as tiny_model

CUDA = torch.cuda.is_available()


def decode(model, step_kind, prompt: torch.Tensor, tokens: list[int], capacity: int, cache=None) -> tuple[list, object]:
    """Prefill `prompt` (into `cache`, or a new one), then feed `tokens` one by one; the logits after each."""
    cache = cache if cache is not None else model.new_cache(capacity)
    n = prompt.numel()
    model.forward(prompt, torch.arange(n, device=prompt.device), cache, AttentionMode.CAUSAL_FROM_ZERO, n - 1)
    backend = resolve_kernels("auto", model.device)
    step = step_kind(graphs_for(model), cache) if step_kind is GraphedDecodeStep else step_kind(model, cache, backend)
    return [step(t, n + i).clone() for i, t in enumerate(tokens)], step


_GRAPHS: dict = {}


def graphs_for(model) -> GraphCache:
    """One runner's graph cache per model, as the engine keeps it."""
    if model not in _GRAPHS:
        _GRAPHS[model] = GraphCache(model, resolve_kernels("auto", model.device), True, True)
    return _GRAPHS[model]


def step_for(model, cache):
    return make_decode_step(model, cache, graphs_for(model), resolve_kernels("auto", model.device))


def test_eager_steps_equal_one_prefill_of_the_whole_sequence():
    model = tiny_model("cpu", torch.float32)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 512, (37,), generator=g)
    tokens = torch.randint(0, 512, (5,), generator=g).tolist()
    assert isinstance(step_for(model, model.new_cache(8)), EagerDecodeStep)  # no GPU
    stepped, _ = decode(model, EagerDecodeStep, prompt, tokens, capacity=64)
    whole = torch.cat((prompt, torch.tensor(tokens)))
    cache = model.new_cache(64)
    ref = model.forward(whole, torch.arange(whole.numel()), cache, AttentionMode.CAUSAL_FROM_ZERO, whole.numel() - 1)
    assert torch.allclose(stepped[-1], ref[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("capacity", [200, 5000])  # one key range; split key ranges (flash-decoding)
def test_graph_replay_matches_eager_decode(dtype, tol, capacity):
    model = tiny_model("cuda", dtype)
    g = torch.Generator().manual_seed(capacity)
    prompt = torch.randint(0, 512, (capacity - 40,), generator=g).cuda()
    tokens = torch.randint(0, 512, (12,), generator=g).tolist()
    assert isinstance(step_for(model, model.new_cache(8)), GraphedDecodeStep)
    eager, _ = decode(model, EagerDecodeStep, prompt, tokens, capacity)
    graphed, step = decode(model, GraphedDecodeStep, prompt, tokens, capacity)
    assert step.captured is not None  # captured on the first step, replayed for the other 11
    for a, b in zip(eager, graphed, strict=True):
        assert torch.isfinite(b).all()
        assert ((a.double() - b.double()).norm() / a.double().norm()).item() < tol


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_failed_capture_falls_back_to_eager_decode(monkeypatch):
    import contextlib

    @contextlib.contextmanager
    def failing_graph(*args, **kwargs):
        raise RuntimeError("capture refused")
        yield

    model = tiny_model("cuda", torch.float32)
    prompt = torch.randint(0, 512, (100,), generator=torch.Generator().manual_seed(3)).cuda()
    tokens = [5, 17, 99, 3]
    eager, _ = decode(model, EagerDecodeStep, prompt, tokens, 200)
    monkeypatch.setattr(torch.cuda, "graph", failing_graph)
    with pytest.warns(RuntimeWarning, match="capture"):
        graphed, step = decode(model, GraphedDecodeStep, prompt, tokens, 200)
    assert step.eager is not None
    for a, b in zip(eager, graphed, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_a_later_request_over_the_same_buffers_replays_without_capturing():
    model = tiny_model("cuda", torch.float32)
    g = torch.Generator().manual_seed(8)
    cache = model.new_cache(300)
    first_prompt, second_prompt = (torch.randint(0, 512, (n,), generator=g).cuda() for n in (120, 77))
    tokens = torch.randint(0, 512, (6,), generator=g).tolist()
    _, first = decode(model, GraphedDecodeStep, first_prompt, tokens, 300, cache=cache)
    assert not first.reused and first.captured is not None
    graphed, second = decode(model, GraphedDecodeStep, second_prompt, tokens, 300, cache=cache)
    assert second.reused and second.captured is first.captured  # no second capture
    eager, _ = decode(model, EagerDecodeStep, second_prompt, tokens, 300)
    for a, b in zip(eager, graphed, strict=True):
        assert ((a.double() - b.double()).norm() / a.double().norm()).item() < 1e-4
    assert not GraphedDecodeStep(graphs_for(model), model.new_cache(301)).reused  # another layout: its own capture
