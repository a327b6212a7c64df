"""RoPE on the fresh queries and keys of a layer, in place in the QKV projection's output.

In PyTorch, x * cos + rotate_half(x) * sin is five passes with four temporaries (a negation,
a concatenation, two products and a sum) over q and k; at 2.5K recomputed tokens of an 8B
model that is ~100 us of memory traffic a layer, and in the 80-token selection probe five
host launches a layer. The Triton kernel reads each (x1, x2) pair once, rotates in fp32 and
writes it back over x: one launch, one pass. PyTorch rounds after each product and again
after the sum; the kernel rounds once (at most one ulp of the dtype apart).
"""

from __future__ import annotations

import torch

from . import _dispatch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [N, H, D]; cos/sin: [N, 1, D] in x's dtype -> rotated copy (transformers' arithmetic)."""
    return x * cos + rotate_half(x) * sin


def apply_rotary_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Rotate x [N, H, D] in place (rotate-half layout; cos/sin [N, 1, D], halves equal) and return it.

    x may be a strided view (q and k heads inside the fused QKV output); its last dim must be
    contiguous. The Triton kernel runs on CUDA (or under TRITON_INTERPRET=1) for power-of-two D/2.
    """
    half = x.shape[-1] // 2
    kernel_ok = half & (half - 1) == 0 and x.stride(-1) == 1 and cos.stride(-1) == 1 and sin.stride() == cos.stride()
    if kernel_ok and _dispatch.use_triton(x, backend):
        from .rotary_triton import rotate_inplace_triton

        rotate_inplace_triton(x, cos, sin)
        return x
    return x.copy_(apply_rotary_ref(x, cos, sin))
