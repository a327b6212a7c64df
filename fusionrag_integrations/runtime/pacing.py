"""Chunked prefill: a long prompt computed a piece at a time, so running requests keep decoding.

A 16K-token full prefill of an 8B model holds the GPU for about half a second; under continuous
batching every running request would wait that long for its next token. The scheduler passes a
`Pacing`: the prompt is computed `piece_tokens` at a time (each piece attends to the cache written by
the pieces before it, causal by position: exact), and after every piece but the last `between()`
runs one decode step of the other requests. A piece's activations are also bounded by its size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model.attention import AttentionMode, CacheAttention, KVCache
from ..model.forward import run_layers
from ..model.transformer import TransformerModel


@dataclass(frozen=True)
class Pacing:
    piece_tokens: int
    between: Callable[[], None]

    def splits(self, n: int) -> bool:
        return n > self.piece_tokens


def paced_forward(
    model: TransformerModel,
    ids: torch.Tensor,
    positions: torch.Tensor,
    cache: KVCache,
    pacing: Pacing,
    backend: str,
    from_zero: bool,
) -> torch.Tensor:
    """Tokens `ids` at ascending `positions`, a piece at a time; the last token's logits [1, V].
    from_zero: positions are 0..n-1 with nothing cached before (the first piece runs plain causal)."""
    host_positions = positions.tolist()  # each piece's last position sizes its key range, on the host
    n, logits = len(host_positions), None
    for start in range(0, n, pacing.piece_tokens):
        end = min(n, start + pacing.piece_tokens)
        mode = AttentionMode.CAUSAL_FROM_ZERO if from_zero and start == 0 else AttentionMode.BY_POSITION
        attention = CacheAttention(cache, mode, host_positions[end - 1], backend)
        h, _ = run_layers(model, ids[start:end], positions[start:end], attention, last_row_only=True)
        if end < n:
            pacing.between()
        else:
            logits = model.logits(h[-1:])
    return logits
