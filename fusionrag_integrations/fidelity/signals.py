"""What the guard knows when a fused prefill ends, before the first token goes out: cheap signals
that predict how far the answer will drift from full attention's.

- entropy, margin: the fused first-token distribution (nats; top-1 minus top-2 probability). A flat
  distribution flips under small KV errors.
- missed_attention: the share of the probe's attention on chunk tokens left unrecomputed (selectors
  with a probe: hybrid, qcfuse). The question reads stale KV there.
- residual_deviation: log10 of the chunks' mean relative K/V deviation at layer 1 after the recompute,
  from one token in 8 (recomputed tokens show none; what was kept shows how stale it is).
- recompute_share, chunk_share: how much of the chunks was recomputed; how much of the prompt is chunks.
- standalone: the share of chunks whose KV was computed alone (not after similar passages).
"""

from __future__ import annotations

import math

import torch

from ..fusion.hybrid import chunk_deviation
from ..fusion.placement import FusionContext
from ..store.chunk_kv import is_standalone

SIGNALS = (
    "entropy",
    "margin",
    "missed_attention",
    "residual_deviation",
    "recompute_share",
    "chunk_share",
    "standalone",
)
DEVIATION_STRIDE = 8


@torch.inference_mode()
def guard_signals(ctx: FusionContext | None, logits: torch.Tensor, recomputed: int, n_chunk: int) -> dict[str, float]:
    """The signals of one fused prefill (ctx: its fusion context, after the recompute; logits: [V])."""
    probs = torch.softmax(logits.float().reshape(-1), dim=-1)
    top = torch.topk(probs, 2).values
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum()
    values = torch.stack([entropy, top[0] - top[1]]).tolist()
    signals = {"entropy": values[0], "margin": values[1]}
    if ctx is None or n_chunk == 0:
        return signals
    signals.update({name: float(v) for name, v in ctx.signals.items()})
    deviation = chunk_deviation(ctx, layer=1, stride=DEVIATION_STRIDE)
    lengths = [c.entry.num_tokens for c in ctx.chunks]
    mean = sum(n * d for n, d in zip(lengths, deviation)) / max(sum(lengths), 1)
    signals["residual_deviation"] = math.log10(max(mean, 0.0) + 1e-6)
    signals["recompute_share"] = recomputed / n_chunk
    signals["chunk_share"] = n_chunk / ctx.num_positions
    signals["standalone"] = sum(is_standalone(c.entry.context_id) for c in ctx.chunks) / len(ctx.chunks)
    return signals
