"""What makes a model and a tokenizer themselves: the fingerprints in every chunk key and entry header,
so that a cache made by another model (or another cast of it) can never be used."""

from __future__ import annotations

import hashlib
import json

import torch

from .config import Tokenizer
from .transformer import TransformerModel


def model_fingerprint(model: TransformerModel) -> str:
    """sha256 over architecture, dtype and a strided sample of every weight tensor.

    Sampling (<= 4096 values per tensor) keeps this fast for multi-GB models while any
    retrained, re-quantised or differently cast checkpoint changes it.
    """
    h = hashlib.sha256(repr(model.config).encode() + str(model.dtype).encode())
    tensors = [model.embed_weight, model.final_norm, model.lm_head]
    for layer in model.layers:
        tensors += [t for t in vars(layer).values() if t is not None]
    for t in tensors:
        flat = t.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(sample.view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(payload.encode()).hexdigest()
