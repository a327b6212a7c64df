"""FusionRAGChroma: langchain_chroma.Chroma that precomputes each document's KV when it is added.

Everything else is Chroma's own behaviour (persistent directories, HTTP clients, filters,
MMR, ids, upserts). Documents come back exactly as stored: the KV is keyed by the text
itself inside the engine's store, so no extra metadata is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from langchain_chroma import Chroma

from ..engine import FusionEngine
from ..inputs import check_texts
from ..integrations.chunk_keeper import ChunkKeeper
from ..integrations.common import check_precompute_mode, store_engine


class FusionRAGChroma(Chroma):
    """A Chroma vector store whose `add_texts` / `add_documents` / `from_texts` also precompute
    chunk KV through `engine`, and whose `delete` forgets it.

    Instantiate:
        .. code-block:: python

            from fusionrag_integrations.langchain import ChatFusionRAG, FusionRAGChroma, MiniLMEmbeddings
            llm = ChatFusionRAG(model="path/to/model")
            store = FusionRAGChroma(engine=llm.engine, embedding_function=MiniLMEmbeddings(),
                                    persist_directory="./chroma")
            store.add_texts(["...", "..."])          # embeds and precomputes the KV of each text
            retriever = store.as_retriever(search_kwargs={"k": 4})

    Any other keyword argument is passed to ``langchain_chroma.Chroma``.
    """

    def __init__(
        self,
        engine: FusionEngine | None = None,
        *,
        precompute: str = "similar",
        neighbors: int = 3,
        show_progress: bool | None = None,
        server: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        """precompute: "similar" (default; FusionRAG's similarity-guided preprocessing: each new chunk is
        computed after its `neighbors` nearest chunks in the collection, which cuts the fused answer's first-token
        KL to full attention 3-5x, benchmarks/RESULTS.md 'Quality defaults'; ~4-6x the compute per chunk at
        insert) or "standalone" (each chunk alone: the cheapest ingest).
        server: a `fusionrag serve` URL to precompute through instead of a local engine (api_key: its key,
        default $FUSIONRAG_API_KEY)."""
        keeper = store_engine(engine, server, api_key, "FusionRAGChroma", "ChatFusionRAG")
        check_precompute_mode(precompute, keeper, "FusionRAGChroma", "ChatFusionRAG")
        if isinstance(kwargs.get("persist_directory"), (str, os.PathLike)):  # '~' expanded, as everywhere
            kwargs["persist_directory"] = os.path.expanduser(kwargs["persist_directory"])
        super().__init__(**kwargs)
        self.engine: ChunkKeeper = keeper
        self.precompute_mode, self.neighbors = precompute, neighbors
        self.show_progress = show_progress

    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, ids: list[str] | None = None, **kwargs: Any
    ) -> list[str]:
        texts = check_texts(texts, "texts")
        if ids:  # an upsert that replaces a document's text leaves the old text's KV unused: drop it
            old = self.get(ids=[i for i in ids if i is not None], include=["documents"])
            new = dict(zip(ids, texts))
            stale = [doc for i, doc in zip(old["ids"], old["documents"]) if doc is not None and new.get(i) != doc]
            if stale:
                self.engine.forget(self.engine.keys_for(stale))
        result = super().add_texts(texts, metadatas=metadatas, ids=ids, **kwargs)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if keep:
            texts_ = [texts[i] for i in keep]
            neighbors = self.nearest_texts([result[i] for i in keep]) if self.precompute_mode == "similar" else None
            self.engine.precompute(texts_, neighbors=neighbors, show_progress=self.show_progress)
        return result

    def nearest_texts(self, ids: list[str]) -> list[list[str]]:
        """For each stored id: the texts of its `neighbors` nearest documents by the collection's own
        metric (itself excluded), ordered farthest to nearest, so the nearest sits right before it."""
        got = self._collection.get(ids=ids, include=["embeddings"])
        vectors, found = got["embeddings"], got["ids"]  # a numpy array: compared with None, never tested for truth
        assert vectors is not None  # `include` asked for them
        embedding = dict(zip(found, vectors))
        n = min(self.neighbors + 1, self._collection.count())
        res = self._collection.query(query_embeddings=[embedding[i] for i in ids], n_results=n, include=["documents"])
        documents = res["documents"]
        assert documents is not None  # `include` asked for them
        return [
            [doc for hit, doc in zip(hits, docs) if hit != own][: self.neighbors][::-1]
            for own, hits, docs in zip(ids, res["ids"], documents)
        ]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> None:
        if ids:
            docs = self.get(ids=ids, include=["documents"])["documents"]
            texts = [d for d in docs if d and d.strip()]
            if texts:
                self.engine.forget(self.engine.keys_for(texts))
        super().delete(ids=ids, **kwargs)
