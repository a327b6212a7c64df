"""FusionRAGChromaVectorStore against the pattern of llama-index's own Chroma store tests, plus KV bookkeeping."""

from __future__ import annotations

import chromadb
import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from fusionrag_integrations.llamaindex import FusionRAGChromaVectorStore
from fusionrag_integrations.llamaindex.vector_store import prompt_text

TEXTS = [
    "lorem ipsum dolor sit amet, the first of three test nodes for the vector store",
    "lorem ipsum dolor sit amet, the second of three test nodes, with other metadata",
    "lorem ipsum dolor sit amet, the third node belongs to a different source document",
]


def make_nodes() -> list[TextNode]:
    return [
        TextNode(
            text=TEXTS[0],
            id_="c330d77f-90bd-4c51-9ed2-57d8d693b3b0",
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="test-0")},
            metadata={"author": "Stephen King", "theme": "Friendship"},
            embedding=[1.0, 0.0, 0.0],
        ),
        TextNode(
            text=TEXTS[1],
            id_="c3d1e1dd-8fb4-4b8f-b7ea-7fa96038d39d",
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="test-0")},
            metadata={"director": "Francis Ford Coppola", "theme": "Mafia"},
            embedding=[0.0, 1.0, 0.0],
        ),
        TextNode(
            text=TEXTS[2],
            id_="c3ew11cd-8fb4-4b8f-b7ea-7fa96038d39d",
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="test-1")},
            metadata={"director": "Christopher Nolan"},
            embedding=[0.0, 0.0, 1.0],
        ),
    ]


@pytest.fixture
def store(li_engine, tmp_path):
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    collection = client.get_or_create_collection("test_collection")
    yield FusionRAGChromaVectorStore(engine=li_engine, chroma_collection=collection)
    client.delete_collection("test_collection")


def test_is_a_pydantic_vector_store():
    assert BasePydanticVectorStore.__name__ in [b.__name__ for b in FusionRAGChromaVectorStore.__mro__]


def test_from_params_persist_dir(li_engine, tmp_path):
    store = FusionRAGChromaVectorStore.from_params(
        collection_name="test", persist_dir=str(tmp_path / "p"), engine=li_engine
    )
    assert isinstance(store, FusionRAGChromaVectorStore) and store.engine is li_engine
    store.add(make_nodes())
    reopened = FusionRAGChromaVectorStore.from_params(
        collection_name="test", persist_dir=str(tmp_path / "p"), engine=li_engine
    )
    assert len(reopened.get_nodes(None)) == 3


@pytest.mark.parametrize("use_async", [False, True])
async def test_add_precomputes_the_llm_text_and_query_works(store, li_engine, use_async):
    nodes = make_nodes()
    ids = await store.async_add(nodes) if use_async else store.add(nodes)
    assert ids == [n.node_id for n in nodes]
    for n in nodes:  # exactly what a query engine renders: metadata lines + text
        assert prompt_text(n).startswith(next(iter(n.metadata)))
        assert li_engine.keys_for([prompt_text(n)])
    query = VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=1)
    res = await store.aquery(query) if use_async else store.query(query)
    assert res.nodes[0].get_content() == TEXTS[0] and res.nodes[0].metadata["author"] == "Stephen King"


@pytest.mark.parametrize("use_async", [False, True])
async def test_metadata_filter_query(store, use_async):
    store.add(make_nodes())
    filters = MetadataFilters(
        filters=[MetadataFilter(key="director", value="Christopher Nolan", operator=FilterOperator.EQ)]
    )
    query = VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=3, filters=filters)
    res = await store.aquery(query) if use_async else store.query(query)
    assert [n.get_content() for n in res.nodes] == [TEXTS[2]]


def test_get_nodes(store):
    store.add(make_nodes())
    got = store.get_nodes(node_ids=["c330d77f-90bd-4c51-9ed2-57d8d693b3b0", "c3d1e1dd-8fb4-4b8f-b7ea-7fa96038d39d"])
    assert sorted(n.get_content() for n in got) == sorted(TEXTS[:2])


@pytest.mark.parametrize("use_async", [False, True])
async def test_delete_by_document_forgets_its_kv(store, li_engine, use_async):
    nodes = make_nodes()
    store.add(nodes)
    await store.adelete("test-0") if use_async else store.delete("test-0")
    assert [n.get_content() for n in store.get_nodes(None)] == [TEXTS[2]]
    assert li_engine.keys_for([prompt_text(nodes[0]), prompt_text(nodes[1])]) == []
    assert li_engine.keys_for([prompt_text(nodes[2])])


@pytest.mark.parametrize("use_async", [False, True])
async def test_delete_nodes_forgets_their_kv(store, li_engine, use_async):
    nodes = make_nodes()
    store.add(nodes)
    ids = ["c330d77f-90bd-4c51-9ed2-57d8d693b3b0"]
    await store.adelete_nodes(ids) if use_async else store.delete_nodes(ids)
    assert sorted(n.get_content() for n in store.get_nodes(None)) == sorted(TEXTS[1:])
    assert li_engine.keys_for([prompt_text(nodes[0])]) == [] and li_engine.keys_for([prompt_text(nodes[1])])
    filters = MetadataFilters(filters=[MetadataFilter(key="theme", value="Mafia", operator=FilterOperator.EQ)])
    store.delete_nodes(filters=filters)
    assert [n.get_content() for n in store.get_nodes(None)] == [TEXTS[2]]
    assert li_engine.keys_for([prompt_text(nodes[1])]) == []


@pytest.mark.parametrize("use_async", [False, True])
async def test_clear_forgets_everything(store, li_engine, use_async):
    nodes = make_nodes()
    store.add(nodes)
    await store.aclear() if use_async else store.clear()
    assert store.get_nodes(None) == []
    assert li_engine.keys_for([prompt_text(n) for n in nodes]) == [] and len(li_engine.chunks) == 0


def test_http_client(li_engine, chroma_server):
    collection = chroma_server.get_or_create_collection("li_http_collection")
    store = FusionRAGChromaVectorStore(engine=li_engine, chroma_collection=collection)
    nodes = make_nodes()
    store.add(nodes)
    assert li_engine.keys_for([prompt_text(n) for n in nodes])
    res = store.query(VectorStoreQuery(query_embedding=[0.0, 1.0, 0.0], similarity_top_k=1))
    assert res.nodes[0].get_content() == TEXTS[1]
    store.clear()
    assert li_engine.keys_for([prompt_text(n) for n in nodes]) == []
    chroma_server.delete_collection("li_http_collection")
