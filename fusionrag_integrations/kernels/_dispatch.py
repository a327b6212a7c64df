"""Which implementation runs: decided once per process from the device and the environment."""

from __future__ import annotations

import functools
import os
import warnings

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(t: torch.Tensor, backend: str = "auto") -> bool:
    if backend == "never":
        return False
    ok = triton_available() and (t.is_cuda or (t.device.type == "cpu" and interpret_mode()))
    if backend == "always" and not ok:
        raise RuntimeError("Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 on CPU, and triton installed")
    return ok


_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
