"""FusionRAGChroma(precompute="similar"): neighbours are the store's own nearest documents."""

from __future__ import annotations

import chromadb

from fusionrag_integrations.langchain import FusionRAGChroma
from tests.conftest import DOCS
from tests.langchain.test_chain import EXTRA


def test_similar_precompute_uses_the_stores_nearest_documents(lc_engine, embeddings, tmp_path):
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    store = FusionRAGChroma(
        engine=lc_engine,
        client=client,
        collection_name="similar",
        embedding_function=embeddings,
        precompute="similar",
        neighbors=2,
    )
    store.add_texts(DOCS, ids=[f"d{i}" for i in range(4)])
    seen = []
    original = lc_engine.precompute
    lc_engine.precompute = lambda texts, **kw: seen.append((list(texts), kw.get("neighbors"))) or original(texts, **kw)
    try:
        store.add_texts(EXTRA, ids=[f"e{i}" for i in range(4)])
    finally:
        del lc_engine.precompute
    [(texts, neighbors)] = seen
    assert texts == EXTRA
    for text, nbrs in zip(texts, neighbors):
        # the store's own ranking (its distance metric), this document excluded, nearest last
        ranked = [d.page_content for d, _ in store.similarity_search_with_score(text, k=3) if d.page_content != text]
        assert nbrs == ranked[:2][::-1]
    entry = lc_engine.chunks.get(lc_engine.keys_for([EXTRA[0]])[0])
    assert entry.context_id.startswith("nbr:")  # the similarity-guided entry is the preferred one
    store.delete(["d0", "d1"])  # neighbours gone: the entry stays valid (a cache of a computation)
    assert lc_engine.keys_for([EXTRA[0]])
