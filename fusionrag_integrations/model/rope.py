"""Rotary position embedding, and re-rotation of cached keys by a position delta.

RoPE rotates each (x_i, x_{i+D/2}) pair of a query/key by angle `position * inv_freq_i`.
Rotations compose, so a key stored post-RoPE at position p moves to p' by one more
rotation of `p' - p`: that is how cached chunks are placed at new offsets
(kernels/rope_gather.py does that move).

Angles are computed in float64 and only cos/sin are cast down. In float32 the angle
`p * inv_freq` itself carries an error of about |p * inv_freq| * 6e-8 rad, which at long
positions would make a re-rotated cached key differ from a freshly computed one by more
than rounding. The frequency set is exactly the checkpoint's (`inv_freq` from transformers'
own RoPE initialisers, so Llama-3 scaling, linear and YaRN are the library's math).
"""

from __future__ import annotations

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class RotaryEmbedding:
    """cos/sin for any positions, applied HF-style (rotate-half, "neox" layout)."""

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float = 1.0) -> None:
        self.inv_freq = inv_freq.to(torch.float64)  # [D/2]
        self.inv_freq_host = inv_freq.to("cpu", torch.float64)  # chunk re-rotation angles: no device launch
        self.attention_scaling = float(attention_scaling)

    def to(self, device: torch.device | str) -> RotaryEmbedding:
        return RotaryEmbedding(self.inv_freq.to(device), self.attention_scaling)

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype, scaled: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [N] int -> cos, sin: [N, 1, D] in `dtype` (broadcast over heads)."""
        angles = positions.to(device=self.inv_freq.device, dtype=torch.float64)[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        scale = self.attention_scaling if scaled else 1.0
        cos = (angles.cos() * scale).to(dtype)[:, None, :]
        sin = (angles.sin() * scale).to(dtype)[:, None, :]
        return cos, sin
