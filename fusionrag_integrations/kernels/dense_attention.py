"""Dense attention in the [S, H, D] layout the model keeps: PyTorch's fused SDPA (flash where it can), the
reference the decode kernels are checked against and the path where a Triton kernel does not run."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """[S, H, D] layout in and out; GQA without expanding K/V (enable_gqa).

    The batch dimension matters: with 4-D inputs PyTorch picks its fused (flash) kernels,
    3-D inputs fall to the unfused math path (several times slower on CPU).
    """
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], is_causal=causal, enable_gqa=True
    )
    return out[0].transpose(0, 1)
