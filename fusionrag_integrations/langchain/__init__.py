"""LangChain integration: a drop-in chat model and a Chroma vector store that precomputes chunk KV."""

from .chat_model import ChatFusionRAG
from .embeddings import MiniLMEmbeddings
from .vectorstore import FusionRAGChroma

__all__ = ["ChatFusionRAG", "FusionRAGChroma", "MiniLMEmbeddings"]
