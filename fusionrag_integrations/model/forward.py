"""The one forward: a single layer loop for every pass (plain prefill, fused recompute, the
selection probe, chunk precompute, decode; the CUDA graphs record this same function).

The pass's attention (attention.py) decides where K/V go and which kernel attends; two hooks let
fusion look inside the loop without a loop of its own: `before_write` sees a layer's fresh q/k/v
while the cache still holds the old rows (CacheBlend compares them, and may narrow the pass to the
tokens it keeps), `after_write` sees the queries once their K/V are written (attention probes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

import torch

from .config import ModelConfig

# (layer, q, k, v, positions) -> a boolean mask over the running tokens to keep from here on, or None
BeforeWrite = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], "torch.Tensor | None"]
AfterWrite = Callable[[int, torch.Tensor, torch.Tensor], None]  # (layer, q, positions)


class Layers(Protocol):
    """The model as the loop sees it (transformer.TransformerModel): embedding, rotary tables, and each
    layer cut where attention goes (q/k/v in, the attention output back)."""

    config: ModelConfig

    def embed(self, ids: torch.Tensor) -> torch.Tensor: ...

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def qkv(
        self, layer: int, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def finish_layer(self, layer: int, h: torch.Tensor, attn: torch.Tensor, backend: str) -> torch.Tensor: ...


class Attention(Protocol):
    backend: str

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None: ...

    def attend(
        self, layer: int, q: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor: ...


class OutputRows(Attention, Protocol):
    """What `last_row_only` needs: the rows whose output the caller reads (the last one, or one per
    packed pass), and attention for those rows alone once every row's K/V is written."""

    output_rows: slice | torch.Tensor

    def attend_last(self, layer: int, q: torch.Tensor) -> torch.Tensor: ...


@torch.inference_mode()
def run_layers(
    model: Layers,
    ids: torch.Tensor,
    positions: torch.Tensor,
    attention: Attention,
    *,
    num_layers: int | None = None,
    before_write: BeforeWrite | None = None,
    after_write: AfterWrite | None = None,
    finish_last: bool = True,
    last_row_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run tokens `ids` at `positions` through the first `num_layers` layers.

    finish_last=False stops the last layer after its K/V write (and after_write): a probe that reads
    only that layer's queries, or a precompute that keeps only K/V, skips its attention and MLP.
    last_row_only: the caller reads only the last token's output (its logits), so the last layer
    runs attention and MLP for that token alone, once every token's K/V is written (exact). An
    attention that packs several passes (packed.py) names its output rows instead (`output_rows`).
    Returns (hidden states, positions) of the tokens still running at the end.
    """
    h = model.embed(ids)
    cos, sin = model.rotary(positions)
    backend = attention.backend
    num_layers = model.config.num_layers if num_layers is None else num_layers
    for layer in range(num_layers):
        q, k, v = model.qkv(layer, h, cos, sin, backend)
        keep = before_write(layer, q, k, v, positions) if before_write is not None else None
        attention.write(layer, positions, k, v)
        if after_write is not None:
            after_write(layer, q, positions)
        last = layer == num_layers - 1
        if last and not finish_last:
            break
        if keep is not None:
            h, q, positions, cos, sin = h[keep], q[keep], positions[keep], cos[keep], sin[keep]
        if last and last_row_only:
            outputs = cast(OutputRows, attention)
            rows = outputs.output_rows
            h, positions = h[rows], positions[rows]
            attn = outputs.attend_last(layer, q[rows])
        else:
            attn = attention.attend(layer, q, positions, k, v)
        h = model.finish_layer(layer, h, attn, backend)
    return h, positions
