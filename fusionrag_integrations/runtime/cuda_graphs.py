"""What the CUDA-graphed paths (decode step, selection probe) share: when a graph applies, and
how one is recorded."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..kernels import _dispatch
from ..model.transformer import TransformerModel

GRAPH_HEAD_DIMS = (64, 128)  # the Triton kernel's head sizes; others would fall back to the reference
MAX_GRAPHS = 4  # per model and path: the most recently used layouts


def can_graph(model: TransformerModel) -> bool:
    return (
        model.device.type == "cuda"
        and model.config.head_dim in GRAPH_HEAD_DIMS
        and model.kernel_backend(torch.empty(0, device=model.device)) != "never"
        and _dispatch.triton_available()
    )


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
