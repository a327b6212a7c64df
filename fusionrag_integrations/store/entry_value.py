"""A chunk entry as one value, for backends that store values rather than files (Redis).

The bytes are the entry file's safetensors layout (header with the key, model fingerprint, stored
format and keyed MAC; then the raw tensors), so a value is checked exactly like a file. Reading is
zero-copy: the tensors are views into the value received, which matters at the sizes involved (an
8B-model chunk of 512 tokens is 64 MB in bf16; a 16K-token request reads 2 GB).
"""

from __future__ import annotations

import json
import warnings
from typing import BinaryIO, cast

import torch

from .chunk_kv import _DTYPES, ChunkKV, CorruptEntryError, _save_safetensors, _sealed, _verified

_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPES.items()}


class _Parts:
    """A write target that keeps the pieces (views) so they are joined into the value with one copy."""

    def __init__(self) -> None:
        self.parts: list = []

    def write(self, part: bytes | memoryview) -> None:
        self.parts.append(part)


def entry_bytes(entry: ChunkKV, secret: bytes) -> bytes:
    """The entry as one value (the same safetensors layout as a file): what a remote backend stores."""
    out = _Parts()
    _save_safetensors(*_sealed(entry, secret), cast(BinaryIO, out))  # it only calls write()
    return b"".join(out.parts)


def entry_from_bytes(data: bytes, expected_key: str, model_fingerprint: str, secret: bytes) -> ChunkKV:
    """Parse and verify a value written by entry_bytes (the checks read_entry makes on a file)."""
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(bytes(data[8 : 8 + n]))
        meta = header.pop("__metadata__", None) or {}
        tensors = {name: _view(data, 8 + n, spec) for name, spec in header.items()}
    except Exception as exc:  # truncated or garbled: json, int() and frombuffer raise various types
        raise CorruptEntryError(f"unreadable: {exc}") from None
    return _verified(meta, tensors, expected_key, model_fingerprint, secret)


def _view(data: bytes, base: int, spec: dict) -> torch.Tensor:
    """One tensor of the value, as a view of its bytes (bounds and sizes checked before any view)."""
    dtype, shape = _TORCH_DTYPES[spec["dtype"]], [int(d) for d in spec["shape"]]
    begin, end = (int(o) for o in spec["data_offsets"])
    numel = 1
    for d in shape:
        numel *= d
    itemsize = torch.empty((), dtype=dtype).element_size()
    if not (0 <= begin <= end <= len(data) - base) or end - begin != numel * itemsize or min(shape, default=1) < 0:
        raise ValueError("tensor bytes out of bounds")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():  # the value is immutable bytes: entries are never written in place
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(data, dtype=dtype, count=numel, offset=base + begin).view(shape)
