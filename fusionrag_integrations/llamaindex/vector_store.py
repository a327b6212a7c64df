"""FusionRAGChromaVectorStore: LlamaIndex's ChromaVectorStore that precomputes chunk KV on insert.

The KV is computed over exactly the text a query engine puts in the prompt,
`node.get_content(metadata_mode=MetadataMode.LLM)` (metadata lines included, excluded
keys left out). Deleting nodes (by document, by id, by filter, or all) forgets their KV.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import MetadataFilters, VectorStoreQuery
from llama_index.vector_stores.chroma import ChromaVectorStore
from llama_index.vector_stores.chroma.base import _to_chroma_filter
from pydantic import PrivateAttr

from ..engine import FusionEngine
from ..integrations.chunk_keeper import ChunkKeeper
from ..integrations.common import check_precompute_mode, store_engine


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

    _engine: ChunkKeeper = PrivateAttr()
    _show_progress: bool | None = PrivateAttr(default=None)
    _precompute: str = PrivateAttr(default="similar")
    _neighbors: int = PrivateAttr(default=3)

    def __init__(
        self,
        engine: FusionEngine | None = None,
        precompute: str = "similar",
        neighbors: int = 3,
        show_progress: bool | None = None,
        server: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        """precompute: "similar" (default; FusionRAG's similarity-guided preprocessing: each new node is
        computed after its `neighbors` nearest nodes in the collection, which cuts the fused answer's first-token
        KL to full attention 3-5x, benchmarks/RESULTS.md 'Quality defaults'; ~4-6x the compute per node at
        insert) or "standalone" (each node alone: the cheapest ingest).
        server: a `fusionrag serve` URL to precompute through instead of a local engine (api_key: its key,
        default $FUSIONRAG_API_KEY)."""
        keeper = store_engine(engine, server, api_key, "FusionRAGChromaVectorStore", "FusionRAGLLM")
        check_precompute_mode(precompute, keeper, "FusionRAGChromaVectorStore", "FusionRAGLLM")
        if isinstance(kwargs.get("persist_dir"), (str, os.PathLike)):  # '~' expanded, as everywhere
            kwargs["persist_dir"] = os.path.expanduser(kwargs["persist_dir"])
        super().__init__(**kwargs)
        self._engine = keeper
        self._show_progress = show_progress
        self._precompute, self._neighbors = precompute, neighbors

    @classmethod
    def class_name(cls) -> str:
        return "FusionRAGChromaVectorStore"

    @property
    def engine(self) -> ChunkKeeper:
        return self._engine

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        nodes = list(nodes)
        ids = super().add(nodes, **add_kwargs)
        nodes = [n for n in nodes if prompt_text(n).strip()]
        if nodes:
            neighbors = [self.nearest_texts(n) for n in nodes] if self._precompute == "similar" else None
            self._engine.precompute(
                [prompt_text(n) for n in nodes], neighbors=neighbors, show_progress=self._show_progress
            )
        return ids

    def nearest_texts(self, node: BaseNode) -> list[str]:
        """The prompt texts of the node's `neighbors` nearest nodes by the store's own query (itself
        excluded), ordered farthest to nearest, so the nearest sits right before it."""
        query = VectorStoreQuery(query_embedding=node.get_embedding(), similarity_top_k=self._neighbors + 1)
        hits = [n for n in self.query(query).nodes or [] if n.node_id != node.node_id][: self._neighbors]
        return [prompt_text(n) for n in hits][::-1]

    def _forget(self, nodes: Sequence[BaseNode]) -> None:
        texts = [t for t in map(prompt_text, nodes) if t.strip()]
        if texts:
            self._engine.forget(self._engine.keys_for(texts))

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self._forget(self._get(None, where={"document_id": ref_doc_id}).nodes or [])
        super().delete(ref_doc_id, **delete_kwargs)

    # llama-index's vector store interface takes one MetadataFilters; its Chroma store annotates a list
    # but reads one (hence the override note and the Any below)
    def delete_nodes(  # type: ignore[override]
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        if not node_ids and not filters:
            return
        as_chroma_reads: Any = filters
        self._forget(self.get_nodes(node_ids, as_chroma_reads))
        if not node_ids:  # the base sends ids=[] with the filter, which chromadb >= 1.0 rejects
            assert filters is not None
            self._collection.delete(where=_to_chroma_filter(filters))
            return
        super().delete_nodes(node_ids, as_chroma_reads)

    def clear(self) -> None:
        everything: Any = None  # chromadb's own get() without a filter (annotated as a dict)
        self._forget(self._get(None, where=everything).nodes or [])
        super().clear()
