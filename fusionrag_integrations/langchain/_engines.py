"""One engine per (model, device, dtype) per process: chat models are constructed often (chains,
standard tests), and each engine holds a model's weights and its chunk store."""

from __future__ import annotations

import threading

from ..core.engine import FusionEngine

_engines: dict[tuple[str, str, str], FusionEngine] = {}
_lock = threading.Lock()


def shared_engine(model: str, device: str = "auto", dtype: str = "auto") -> FusionEngine:
    key = (str(model), str(device), str(dtype))
    with _lock:
        if key not in _engines:
            _engines[key] = FusionEngine.from_pretrained(model, device=device, dtype=dtype)
        return _engines[key]
