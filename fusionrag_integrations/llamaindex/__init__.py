"""LlamaIndex integration: a drop-in LLM and a Chroma vector store that precomputes chunk KV on insert."""

from .embeddings import MiniLMEmbedding
from .llm import FusionRAGLLM
from .vector_store import FusionRAGChromaVectorStore

__all__ = ["FusionRAGChromaVectorStore", "FusionRAGLLM", "MiniLMEmbedding"]
