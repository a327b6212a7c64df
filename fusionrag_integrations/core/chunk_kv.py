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
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT_VERSION = "1"
STANDALONE = "standalone"


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


def payload_sha256(entry: ChunkKV) -> str:
    h = hashlib.sha256()
    for t in (entry.token_ids, entry.k, entry.v):
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_entry(entry: ChunkKV, path: Path) -> None:
    """Write to a unique temporary file in the same directory, then rename over `path`.

    The rename is atomic, so readers (other processes too) see either no file or a
    complete one; two writers of one key write identical bytes, so either may win.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    metadata = {
        "format": FORMAT_VERSION,
        "key": entry.key,
        "model_fingerprint": entry.model_fingerprint,
        "context_id": entry.context_id,
        "start": str(entry.start),
        "sha256": payload_sha256(entry),
    }
    tensors = {
        "token_ids": entry.token_ids.contiguous().cpu(),
        "k": entry.k.contiguous().cpu(),
        "v": entry.v.contiguous().cpu(),
    }
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_entry(path: Path, expected_key: str, model_fingerprint: str) -> ChunkKV:
    """Load and verify: format, key, model fingerprint and payload checksum must all match."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in ("token_ids", "k", "v")}
    except Exception as exc:  # truncated or garbled header / data: safetensors raises various types
        raise CorruptEntryError(f"unreadable: {exc}") from None
    if meta.get("format") != FORMAT_VERSION or meta.get("key") != expected_key:
        raise CorruptEntryError("format or key mismatch")
    if meta.get("model_fingerprint") != model_fingerprint:
        raise CorruptEntryError("made by another model")
    entry = ChunkKV(
        key=expected_key,
        token_ids=tensors["token_ids"],
        k=tensors["k"],
        v=tensors["v"],
        start=int(meta["start"]),
        model_fingerprint=meta["model_fingerprint"],
        context_id=meta.get("context_id", STANDALONE),
    )
    if payload_sha256(entry) != meta.get("sha256"):
        raise CorruptEntryError("checksum mismatch")
    return entry
