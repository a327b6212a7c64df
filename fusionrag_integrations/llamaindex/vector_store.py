"""FusionRAGChromaVectorStore: LlamaIndex's ChromaVectorStore that precomputes chunk KV on insert.

The KV is computed over exactly the text a query engine puts in the prompt,
`node.get_content(metadata_mode=MetadataMode.LLM)` (metadata lines included, excluded
keys left out). Deleting nodes (by document, by id, by filter, or all) forgets their KV.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import MetadataFilters
from llama_index.vector_stores.chroma import ChromaVectorStore
from llama_index.vector_stores.chroma.base import _to_chroma_filter
from pydantic import PrivateAttr

from ..core.engine import FusionEngine


def prompt_text(node: BaseNode) -> str:
    """The text of a node as LlamaIndex's response synthesizers render it into the prompt."""
    return node.get_content(metadata_mode=MetadataMode.LLM)


class FusionRAGChromaVectorStore(ChromaVectorStore):
    """ChromaVectorStore (same keyword arguments: `chroma_collection=`, `persist_dir=`, `host=`/`port=`)
    plus `engine=`: `add` precomputes each node's KV, deletes forget it.

    .. code-block:: python

        store = FusionRAGChromaVectorStore(engine=llm.engine, chroma_collection=collection)
        index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store),
                                                embed_model=MiniLMEmbedding())
        index.as_query_engine(llm=llm, similarity_top_k=4).query("...")
    """

    _engine: FusionEngine = PrivateAttr()
    _show_progress: bool | None = PrivateAttr(default=None)

    def __init__(self, engine: FusionEngine | None = None, show_progress: bool | None = None, **kwargs: Any) -> None:
        if engine is None:
            raise ValueError("FusionRAGChromaVectorStore needs engine= (a FusionEngine, e.g. FusionRAGLLM(...).engine)")
        super().__init__(**kwargs)
        self._engine = engine
        self._show_progress = show_progress

    @classmethod
    def class_name(cls) -> str:
        return "FusionRAGChromaVectorStore"

    @property
    def engine(self) -> FusionEngine:
        return self._engine

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        ids = super().add(list(nodes), **add_kwargs)
        texts = [t for t in map(prompt_text, nodes) if t.strip()]
        if texts:
            self._engine.precompute(texts, show_progress=self._show_progress)
        return ids

    def _forget(self, nodes: Sequence[BaseNode]) -> None:
        texts = [t for t in map(prompt_text, nodes) if t.strip()]
        if texts:
            self._engine.forget(self._engine.keys_for(texts))

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self._forget(self._get(None, where={"document_id": ref_doc_id}).nodes)
        super().delete(ref_doc_id, **delete_kwargs)

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        if not node_ids and not filters:
            return
        self._forget(self.get_nodes(node_ids, filters))
        if not node_ids:  # the base sends ids=[] with the filter, which chromadb >= 1.0 rejects
            self._collection.delete(where=_to_chroma_filter(filters))
            return
        super().delete_nodes(node_ids, filters)

    def clear(self) -> None:
        self._forget(self._get(None, where=None).nodes)
        super().clear()
