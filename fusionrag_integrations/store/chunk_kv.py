"""ChunkKV: one chunk's cached keys and values, its identity, and its checksummed file format.

A chunk's KV depends on the model's weights, the chunk's token ids, the tokens that
preceded it when it was computed (the shared prefix, plus neighbour chunks under
similarity-guided precompute), and nothing else. The key hashes exactly those, so a
cache made by another model or under another context can never be picked up.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .integrity import seal, verify

FORMAT_VERSION = "2"  # 2: the chunk text in the header; an HMAC over header and payload
STANDALONE = "standalone"
_HEADER_FIELDS = ("format", "key", "model_fingerprint", "context_id", "start", "text")


class CorruptEntryError(Exception):
    """A file on disk is truncated, bit-flipped, or not what its name claims (internal: the store recomputes)."""


def chunk_key(model_fp: str, tokenizer_fp: str, prefix_ids: list[int], token_ids: list[int], context_id: str) -> str:
    h = hashlib.sha256()
    for part in (model_fp, tokenizer_fp, context_id, json.dumps(prefix_ids), json.dumps(token_ids)):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


@dataclass
class ChunkKV:
    key: str
    token_ids: torch.Tensor  # [T] int64
    k: torch.Tensor  # [L, T, Hkv, D], post-RoPE at positions start .. start+T-1
    v: torch.Tensor  # [L, T, Hkv, D]
    start: int  # absolute position of the first chunk token when it was computed
    model_fingerprint: str
    context_id: str = STANDALONE
    text: str = ""  # the chunk text it was computed from (stripped): checked against the text that asks for it

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2 + self.token_ids.numel() * 8

    @property
    def device(self) -> torch.device:
        return self.k.device

    def to(self, device: torch.device, pin: bool = False) -> ChunkKV:
        if self.k.device == device:
            return self
        k, v = self.k.to(device, non_blocking=True), self.v.to(device, non_blocking=True)
        if pin and device.type == "cpu" and torch.cuda.is_available():
            k, v = k.pin_memory(), v.pin_memory()
        return replace(self, k=k, v=v)


def _header(entry: ChunkKV) -> dict[str, str]:
    return {
        "format": FORMAT_VERSION,
        "key": entry.key,
        "model_fingerprint": entry.model_fingerprint,
        "context_id": entry.context_id,
        "start": str(entry.start),
        "text": entry.text,
    }


def _sealed_parts(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> Iterator[bytes]:
    """What the MAC covers: every header field, then each tensor's dtype, shape and bytes."""
    yield json.dumps([header.get(f) for f in _HEADER_FIELDS]).encode()
    for name in ("token_ids", "k", "v"):
        t = tensors[name].detach().contiguous().cpu()
        yield f"{name}|{t.dtype}|{tuple(t.shape)}".encode()
        yield t.reshape(-1).view(torch.uint8).numpy().data


def write_entry(entry: ChunkKV, path: Path, secret: bytes) -> None:
    """Write to a unique temporary file in the same directory, then rename over `path`.

    The rename is atomic, so readers (other processes too) see either no file or a
    complete one; two writers of one key write identical bytes, so either may win.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tensors = {
        "token_ids": entry.token_ids.contiguous().cpu(),
        "k": entry.k.contiguous().cpu(),
        "v": entry.v.contiguous().cpu(),
    }
    header = _header(entry)
    metadata = {**header, "mac": seal(secret, _sealed_parts(header, tensors))}
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_header(path: Path) -> dict[str, str]:
    """The header alone (no tensor data is read): enough to rebuild the catalog; verified on use."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # truncated or garbled header: safetensors raises various types
        raise CorruptEntryError(f"unreadable header: {exc}") from None


def read_entry(path: Path, expected_key: str, model_fingerprint: str, secret: bytes) -> ChunkKV:
    """Load and verify: format, key, model fingerprint and the MAC over header and payload must all match."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in ("token_ids", "k", "v")}
    except Exception as exc:  # truncated or garbled header / data: safetensors raises various types
        raise CorruptEntryError(f"unreadable: {exc}") from None
    if any(not isinstance(meta.get(f), str) for f in _HEADER_FIELDS) or not meta["start"].isdigit():
        raise CorruptEntryError("incomplete header")
    if meta.get("format") != FORMAT_VERSION or meta.get("key") != expected_key:
        raise CorruptEntryError("format or key mismatch")
    if meta.get("model_fingerprint") != model_fingerprint:
        raise CorruptEntryError("made by another model")
    if not verify(secret, _sealed_parts(meta, tensors), meta.get("mac")):
        raise CorruptEntryError("checksum mismatch (damaged, or not written with this cache's key)")
    k, ids = tensors["k"], tensors["token_ids"]
    if ids.dtype != torch.long or ids.dim() != 1 or k.dim() != 4 or k.shape != tensors["v"].shape:
        raise CorruptEntryError("tensor shapes do not form a chunk entry")
    if k.shape[1] != ids.numel():
        raise CorruptEntryError("K/V rows do not match the token count")
    return ChunkKV(
        key=expected_key,
        token_ids=ids,
        k=k,
        v=tensors["v"],
        start=int(meta["start"]),
        model_fingerprint=meta["model_fingerprint"],
        context_id=meta["context_id"],
        text=meta["text"],
    )
