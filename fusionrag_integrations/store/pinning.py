"""How this process pins host memory: the CPU tier pins a fresh block for every chunk the GPU tier evicts.

By default PyTorch pins with cudaHostAlloc, one call at a time under the driver's lock, its pages faulted
in by the calling thread: an ingest that overflows the GPU tier then runs at the pace one thread pins
pages, and a request that demotes chunks waits on that lock too. PyTorch's host allocator can instead
take ordinary memory, fault its pages in from several threads and register it with CUDA
(`pinned_use_cuda_host_register`); the store asks for that once, when it starts with a GPU tier.

The user's choice stands: when the allocator settings (PYTORCH_CUDA_ALLOC_CONF, PYTORCH_ALLOC_CONF, or
settings made at run time) already name a pinning option, nothing changes; to keep PyTorch's default,
set `PYTORCH_CUDA_ALLOC_CONF=pinned_use_cuda_host_register:False`. The settings a process already has
are passed on with ours, since setting them anew resets the options a call leaves out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

log = logging.getLogger(__name__)

MAX_THREADS = 16  # threads that fault pages in; PyTorch takes a power of two
PINNING_OPTIONS = ("pinned_use_cuda_host_register", "pinned_num_register_threads", "pinned_use_background_threads")
ENV_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def register_threads(cpus: int | None) -> int:
    """The largest power of two at most MAX_THREADS and at most the machine's CPUs (1 when unknown)."""
    n = max(1, min(MAX_THREADS, cpus or 1))
    return 1 << (n.bit_length() - 1)


_set_here: list[str] = []  # the settings this module set, where PyTorch cannot say what is in force


def current_settings(environ: Mapping[str, str]) -> str:
    """The allocator settings in force: PyTorch's own account where it gives one, else the environment's
    and what this module set since."""
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    if getter is not None and torch.cuda.is_available():
        try:
            return str(getter())
        except RuntimeError:
            pass
    return _set_here[-1] if _set_here else ",".join(environ[v] for v in ENV_VARS if environ.get(v))


def threaded_pinning_settings(settings: str, cpus: int | None) -> str | None:
    """`settings` with threaded registration added, or None when they already name a pinning option."""
    if any(option in settings for option in PINNING_OPTIONS):
        return None
    ours = f"pinned_use_cuda_host_register:True,pinned_num_register_threads:{register_threads(cpus)}"
    return f"{settings.strip(',')},{ours}" if settings.strip(",") else ours


def use_threaded_pinning(environ: Mapping[str, str] = os.environ) -> bool:
    """Switch this process's pinned allocations to threaded registration (see the module's docstring);
    True when the settings changed. Idempotent: once set, the settings name the option."""
    if not torch.cuda.is_available():
        return False
    settings = threaded_pinning_settings(current_settings(environ), os.cpu_count())
    if settings is None:
        return False
    try:
        torch.cuda.memory._set_allocator_settings(settings)
    except (RuntimeError, ValueError) as exc:  # an older PyTorch without the option: its default stays
        log.warning("pinned memory stays with PyTorch's default allocation: %s", exc)
        return False
    _set_here.append(settings)
    return True
