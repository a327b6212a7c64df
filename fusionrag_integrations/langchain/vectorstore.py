"""FusionRAGChroma: langchain_chroma.Chroma that precomputes each document's KV when it is added.

Everything else is Chroma's own behaviour (persistent directories, HTTP clients, filters,
MMR, ids, upserts). Documents come back exactly as stored: the KV is keyed by the text
itself inside the engine's store, so no extra metadata is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from langchain_chroma import Chroma

from ..core.engine import FusionEngine


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

    def __init__(self, engine: FusionEngine | None = None, *, show_progress: bool | None = None, **kwargs: Any) -> None:
        if engine is None:
            raise ValueError("FusionRAGChroma needs engine= (a FusionEngine, e.g. ChatFusionRAG(...).engine)")
        super().__init__(**kwargs)
        self.engine = engine
        self.show_progress = show_progress

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        texts = list(texts)
        if ids:  # an upsert that replaces a document's text leaves the old text's KV unused: drop it
            old = self.get(ids=[i for i in ids if i is not None], include=["documents"])
            new = dict(zip(ids, texts))
            stale = [doc for i, doc in zip(old["ids"], old["documents"]) if doc is not None and new.get(i) != doc]
            if stale:
                self.engine.forget(self.engine.keys_for(stale))
        result = super().add_texts(texts, metadatas=metadatas, ids=ids, **kwargs)
        nonempty = [t for t in texts if t.strip()]
        if nonempty:
            self.engine.precompute(nonempty, show_progress=self.show_progress)
        return result

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> None:
        if ids:
            docs = self.get(ids=ids, include=["documents"])["documents"]
            texts = [d for d in docs if d and d.strip()]
            if texts:
                self.engine.forget(self.engine.keys_for(texts))
        super().delete(ids=ids, **kwargs)
