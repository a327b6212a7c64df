"""MiniLMEmbeddings: the bundled all-MiniLM-L6-v2 as a LangChain Embeddings, fully offline."""

from __future__ import annotations

from langchain_core.embeddings import Embeddings

from ..embeddings import shared_encoder


class MiniLMEmbeddings(Embeddings):
    """Normalised 384-d sentence embeddings (cosine = dot product). `path=` takes another
    sentence-transformers-style encoder directory."""

    def __init__(self, path: str | None = None, device: str = "cpu") -> None:
        self.encoder = shared_encoder(path, device)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encoder.encode(list(texts))

    def embed_query(self, text: str) -> list[float]:
        return self.encoder.encode([text])[0]
