"""FusionRAGChromaVectorStore(precompute="similar"): neighbours come from the store's own query."""

from __future__ import annotations

import chromadb
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from fusionrag_integrations.llamaindex import FusionRAGChromaVectorStore
from fusionrag_integrations.llamaindex.vector_store import prompt_text
from tests.conftest import DOCS


def test_similar_precompute_uses_the_stores_nearest_nodes(li_engine, embed_model, tmp_path):
    collection = chromadb.PersistentClient(path=str(tmp_path / "c")).get_or_create_collection("similar")
    store = FusionRAGChromaVectorStore(
        engine=li_engine, chroma_collection=collection, precompute="similar", neighbors=2
    )
    nodes = [
        TextNode(text=t, metadata={"n": i}, embedding=embed_model.get_text_embedding(t)) for i, t in enumerate(DOCS)
    ]
    store.add(nodes[:3])
    seen = []
    original = li_engine.precompute
    li_engine.precompute = lambda texts, **kw: seen.append(kw.get("neighbors")) or original(texts, **kw)
    try:
        store.add([nodes[3]])
    finally:
        del li_engine.precompute
    [[neighbors]] = seen
    hits = store.query(VectorStoreQuery(query_embedding=nodes[3].get_embedding(), similarity_top_k=3)).nodes
    expected = [prompt_text(n) for n in hits if n.node_id != nodes[3].node_id][:2][::-1]
    assert neighbors == expected and all(t.startswith("n: ") for t in neighbors)
    key = li_engine.keys_for([prompt_text(nodes[3])])[0]
    assert li_engine.chunks.get(key).context_id.startswith("nbr:")
