"""MiniLMEmbedding: the bundled all-MiniLM-L6-v2 as a LlamaIndex embedding model, fully offline."""

from __future__ import annotations

from typing import Any

from llama_index.core.embeddings import BaseEmbedding
from pydantic import PrivateAttr

from ..embeddings import MINILM, SentenceEncoder, shared_encoder


class MiniLMEmbedding(BaseEmbedding):
    """Normalised 384-d sentence embeddings; `path=` takes another sentence-transformers-style encoder."""

    _encoder: SentenceEncoder = PrivateAttr()

    def __init__(self, path: str | None = None, device: str = "cpu", **kwargs: Any) -> None:
        super().__init__(model_name=path or MINILM, **kwargs)
        self._encoder = shared_encoder(path, device)

    @classmethod
    def class_name(cls) -> str:
        return "MiniLMEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encoder.encode([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encoder.encode([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encoder.encode(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)
