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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import safe_open

from ..integrity import seal_payload, verify_payload
from ..kernels.codecs import KV_FORMATS, code_dtypes, encode, expected_shapes

FORMAT_VERSION = "3"  # 2: the chunk text in the header; 3: the stored-KV format, scales, a keyed BLAKE3 MAC
STANDALONE = "standalone"
_HEADER_FIELDS = ("format", "key", "model_fingerprint", "context_id", "start", "text", "kv_format")


def tenant_of(salt: str | None) -> str:
    """A cache salt's tenant id: chunks computed under a salt are that tenant's alone (their keys differ,
    only that tenant's prompts detect them, only it can list or delete them). "" = the shared space."""
    return hashlib.sha256(salt.encode()).hexdigest()[:16] if salt else ""


def with_tenant(context_id: str, tenant: str) -> str:
    """The context id an entry is stored under: its tenant rides in it, so it is part of the key."""
    return f"{context_id}@{tenant}" if tenant else context_id


def split_context(context_id: str) -> tuple[str, str]:
    """(context id without the tenant, tenant)."""
    base, _, tenant = context_id.partition("@")
    return base, tenant


def is_standalone(context_id: str) -> bool:
    return split_context(context_id)[0] == STANDALONE


class CorruptEntryError(Exception):
    """A file on disk is truncated, bit-flipped, or not what its name claims (internal: the store recomputes)."""


def chunk_key(
    model_fp: str,
    tokenizer_fp: str,
    prefix_ids: list[int],
    token_ids: list[int],
    context_id: str,
    kv_format: str = "native",
) -> str:
    """SHA-256 over what the KV depends on (and how it is stored: a compact entry is another entry)."""
    h = hashlib.sha256()
    for part in (model_fp, tokenizer_fp, context_id, json.dumps(prefix_ids), json.dumps(token_ids)):
        h.update(part.encode())
        h.update(b"\x00")
    if kv_format != "native":
        h.update(f"kv_format={kv_format}".encode())
    return h.hexdigest()


@dataclass
class ChunkKV:
    key: str
    token_ids: torch.Tensor  # [T] int64, in host memory (device_tensors: what moves with the KV)
    k: torch.Tensor  # [L, T, Hkv, D], post-RoPE at positions start .. start+T-1 (codes if kv_format is compact)
    v: torch.Tensor  # [L, T, Hkv, D]
    start: int  # absolute position of the first chunk token when it was computed
    model_fingerprint: str
    context_id: str = STANDALONE
    text: str = ""  # the chunk text it was computed from (stripped): checked against the text that asks for it
    kv_format: str = "native"  # codecs.py: native, fp8, int4
    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # the compact formats' scales / zeros
    ready: torch.cuda.Event | None = field(default=None, repr=False, compare=False)  # host copy still landing

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def nbytes(self) -> int:
        tensors = (self.k, self.v, self.token_ids, *self.scales.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def device(self) -> torch.device:
        return self.k.device

    def to(self, device: torch.device, pin: bool = False) -> ChunkKV:
        """On `device`; to a pinned host copy the copies are asynchronous (`ready` waits for them)."""
        if self.k.device == device:
            return self
        if self.ready is not None and self.k.device.type == "cuda":  # a side-stream copy: read it once landed
            torch.cuda.current_stream(self.k.device).wait_event(self.ready)
        pinned = pin and device.type == "cpu" and torch.cuda.is_available()
        moved = {name: _moved(t, device, pinned) for name, t in self.device_tensors().items()}
        ready = None
        if pinned and self.k.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record()
        return replace(self, k=moved.pop("k"), v=moved.pop("v"), scales=moved, ready=ready)

    def wait(self) -> ChunkKV:
        """Host code reads the bytes of an asynchronously copied entry only after the copy finished."""
        if self.ready is not None:
            self.ready.synchronize()
        return self

    def to_device_on(self, device: torch.device, stream: torch.cuda.Stream) -> ChunkKV:
        """A copy on the GPU made on a side stream (the copy engine works while the compute stream runs on):
        `ready` records when it lands; the compute stream waits for that in `for_compute`, never the host."""
        with torch.cuda.stream(stream):
            if self.ready is not None:  # a host copy still landing (a demotion): the GPU side waits for it
                stream.wait_event(self.ready)
            moved = {name: t.to(device, non_blocking=True) for name, t in self.device_tensors().items()}
            ready = torch.cuda.Event()
            ready.record(stream)
        return replace(self, k=moved.pop("k"), v=moved.pop("v"), scales=moved, ready=ready)

    def for_compute(self) -> ChunkKV:
        """Before the compute stream reads a GPU entry copied on a side stream: it waits for the copy (on the
        device), and the allocator learns the tensors are used there (freed only once that use is done)."""
        if self.ready is not None and self.k.device.type == "cuda":
            current = torch.cuda.current_stream(self.k.device)
            current.wait_event(self.ready)
            for t in self.device_tensors().values():
                t.record_stream(current)
        return self

    def compacted(self, kv_format: str) -> ChunkKV:
        """This entry in a stored format (codecs.py), encoded on its device; unchanged if already in it."""
        if kv_format == self.kv_format:
            return self
        if self.kv_format != "native":
            raise ValueError(f"cannot re-encode a {self.kv_format} entry as {kv_format}")
        k, v, scales = encode(self.k, self.v, kv_format)
        return replace(self, k=k, v=v, scales=scales, kv_format=kv_format)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything stored: token ids, K and V (codes), scales."""
        return {"token_ids": self.token_ids, "k": self.k, "v": self.v, **self.scales}

    def device_tensors(self) -> dict[str, torch.Tensor]:
        """What moves between tiers: K and V (codes) and scales. The token ids stay in host memory wherever
        the KV lives: the layout reads them on the host (a device copy would cost a sync per chunk)."""
        return {"k": self.k, "v": self.v, **self.scales}


def _moved(t: torch.Tensor, device: torch.device, pinned: bool) -> torch.Tensor:
    if not pinned:  # to the GPU: stream-ordered, safe to not wait; to host memory the bytes must have landed
        return t.to(device, non_blocking=device.type == "cuda")
    if t.device.type == "cpu":
        return t if t.is_pinned() else t.pin_memory()
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return out.copy_(t, non_blocking=True)  # the copy engine moves it while the GPU computes on


def _header(entry: ChunkKV) -> dict[str, str]:
    return {
        "format": FORMAT_VERSION,
        "key": entry.key,
        "model_fingerprint": entry.model_fingerprint,
        "context_id": entry.context_id,
        "start": str(entry.start),
        "text": entry.text,
        "kv_format": entry.kv_format,
    }


def _sealed_parts(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> Iterator[bytes | memoryview]:
    """What the MAC covers: every header field, then each tensor's name, dtype, shape and bytes."""
    yield json.dumps([header.get(f) for f in _HEADER_FIELDS]).encode()
    for name in sorted(tensors):
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
    tensors, metadata = _sealed(entry, secret)
    try:
        with open(tmp, "wb") as f:
            _save_safetensors(tensors, metadata, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sealed(entry: ChunkKV, secret: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {name: t.contiguous().cpu() for name, t in entry.wait().tensors().items()}
    header = _header(entry)
    return tensors, {**header, "mac": seal_payload(secret, _sealed_parts(header, tensors))}


_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.uint8: "U8", torch.int64: "I64"}


def _save_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], out: BinaryIO) -> None:
    """The safetensors layout (8-byte header length, JSON header, raw bytes; read back with safe_open),
    written from zero-copy views: the writes release the interpreter lock, so a writer thread does not
    stall the thread that launches the next batch's compute (safetensors' save_file copies every tensor
    to bytes while holding it)."""
    header: dict = {"__metadata__": metadata}
    views, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        view = t.reshape(-1).view(torch.uint8).numpy().data
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(view)]}
        views.append(view)
        offset += len(view)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    out.write(len(raw).to_bytes(8, "little") + raw)
    for view in views:
        out.write(view)


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
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # truncated or garbled header / data: safetensors raises various types
        raise CorruptEntryError(f"unreadable: {exc}") from None
    return _verified(meta, tensors, expected_key, model_fingerprint, secret)


def _verified(
    meta: dict, tensors: dict[str, torch.Tensor], expected_key: str, model_fingerprint: str, secret: bytes
) -> ChunkKV:
    if any(not isinstance(meta.get(f), str) for f in _HEADER_FIELDS) or not meta["start"].isdigit():
        raise CorruptEntryError("incomplete header")
    if meta.get("format") != FORMAT_VERSION or meta.get("key") != expected_key:
        raise CorruptEntryError("format or key mismatch")
    if meta.get("model_fingerprint") != model_fingerprint:
        raise CorruptEntryError("made by another model")
    if not verify_payload(secret, _sealed_parts(meta, tensors), meta.get("mac")):
        raise CorruptEntryError("checksum mismatch (damaged, or not written with this cache's key)")
    _check_shapes(meta["kv_format"], tensors)
    scales = {name: t for name, t in tensors.items() if name not in ("token_ids", "k", "v")}
    return ChunkKV(
        key=expected_key,
        token_ids=tensors["token_ids"],
        k=tensors["k"],
        v=tensors["v"],
        start=int(meta["start"]),
        model_fingerprint=meta["model_fingerprint"],
        context_id=meta["context_id"],
        text=meta["text"],
        kv_format=meta["kv_format"],
        scales=scales,
    )


def _check_shapes(kv_format: str, tensors: dict[str, torch.Tensor]) -> None:
    """A verified entry could still be one written by a buggy writer: its tensors must form a chunk."""
    ids, k = tensors.get("token_ids"), tensors.get("k")
    if kv_format not in KV_FORMATS or ids is None or k is None or ids.dtype != torch.long or ids.dim() != 1:
        raise CorruptEntryError("tensors do not form a chunk entry")
    if k.dim() != 4 or k.dtype not in code_dtypes(kv_format) or k.shape[1] != ids.numel():
        raise CorruptEntryError("K/V rows do not match the token count")
    L, T, H, d = k.shape
    shape = (L, T, H, d * 2 if kv_format == "int4" else d)
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if name != "token_ids"}
    if shapes != expected_shapes(kv_format, shape):
        raise CorruptEntryError("tensor shapes do not form a chunk entry")
