"""An unchanged LangChain RAG chain over FusionRAGChroma + ChatFusionRAG reuses the cached chunks."""

from __future__ import annotations

import chromadb
import pytest
import torch
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from fusionrag_integrations import EngineConfig, FusionEngine
from fusionrag_integrations.langchain import ChatFusionRAG, FusionRAGChroma
from fusionrag_integrations.langchain.chat_model import to_engine_messages
from tests.conftest import DOCS, LoopTicker

EXTRA = [
    "The harbour of Kellersby freezes in January, so the fishing fleet moves south to Brenmouth for the winter.",
    "Jonas Brekke later taught physics in Osterholm and wrote a short book about snow crystals and frost.",
    "The institute's garden has forty species of moss, collected by volunteers on weekend walks along the coast.",
    "Every spring the town holds a regatta; the winning crew receives a silver oar kept at the town hall.",
]
PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question using only this context:\n\n{context}"),
        ("human", "{question}"),
    ]
)


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(doc.page_content for doc in docs)


def rag_chain(retriever, llm, fmt=format_docs):
    return {"context": retriever | fmt, "question": RunnablePassthrough()} | PROMPT | llm


@pytest.fixture
def store(lc_engine, embeddings, tmp_path):
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    store = FusionRAGChroma(engine=lc_engine, client=client, collection_name="docs", embedding_function=embeddings)
    store.add_texts(DOCS + EXTRA, metadatas=[{"i": i} for i in range(8)])
    return store


def test_unchanged_lcel_chain_reuses_the_four_retrieved_chunks(store, lc_engine):
    llm = ChatFusionRAG(engine=lc_engine, max_tokens=16)
    retriever = store.as_retriever(search_kwargs={"k": 4})
    message = rag_chain(retriever, llm).invoke("What is the password for the archive room?")
    stats = message.response_metadata["stats"]
    assert stats["chunks_found"] == 4 and stats["chunks_reused"] == 4 and stats["chunks_computed"] == 0
    assert message.usage_metadata["input_token_details"]["cache_read"] == stats["tokens_reused"] > 0
    text = (rag_chain(retriever, llm) | StrOutputParser()).invoke("What is the password for the archive room?")
    assert isinstance(text, str) and text == message.content


def test_full_selector_answer_equals_plain_prefill_token_for_token(store, lc_engine, hf_smol):
    llm = ChatFusionRAG(engine=lc_engine, max_tokens=24, selector="full")
    retriever = store.as_retriever(search_kwargs={"k": 4})
    question = "Who founded the Varn Institute?"
    message = rag_chain(retriever, llm).invoke(question)
    stats = message.response_metadata["stats"]
    assert (stats["chunks_found"], stats["chunks_recomputed"], stats["chunks_reused"]) == (4, 4, 0)
    # the same token sequence, prefilled and decoded greedily by transformers itself
    prompt_messages = ({"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT).invoke(
        question
    )
    ids = lc_engine.prefill(to_engine_messages(prompt_messages.to_messages()), selector="full").token_ids
    with torch.no_grad():
        ref = hf_smol.generate(
            torch.tensor([ids]),
            max_new_tokens=24,
            do_sample=False,
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        )
    expected = lc_engine.tokenizer.decode(ref[0, len(ids) :], skip_special_tokens=True)
    assert message.content == expected.strip() or message.content == expected


@pytest.mark.parametrize("separator", ["\n\n", "\n---\n", " || "])
def test_any_separator_hits_the_cache(store, lc_engine, separator):
    llm = ChatFusionRAG(engine=lc_engine, max_tokens=4)
    fmt = lambda docs: separator.join(d.page_content for d in docs)  # noqa: E731
    message = rag_chain(store.as_retriever(search_kwargs={"k": 4}), llm, fmt).invoke("Where is Kellersby?")
    assert message.response_metadata["stats"]["chunks_reused"] == 4


def test_documents_come_back_exactly_as_stored(store):
    [doc] = store.similarity_search("password archive room", k=1)
    assert doc.page_content == DOCS[3] and doc.metadata == {"i": 3}


def test_delete_forgets_the_kv(store, lc_engine):
    ids = store.get(where={"i": 3})["ids"]
    assert lc_engine.keys_for([DOCS[3]])
    store.delete(ids)
    assert lc_engine.keys_for([DOCS[3]]) == [] and store.get(ids=ids)["ids"] == []


def test_upsert_with_new_text_forgets_the_old_kv(store, lc_engine):
    [doc_id] = store.get(where={"i": 5})["ids"]
    store.add_texts(["A completely new text about the lighthouse keeper's daughter and her boat."], ids=[doc_id])
    assert lc_engine.keys_for([EXTRA[1]]) == []
    assert lc_engine.keys_for(["A completely new text about the lighthouse keeper's daughter and her boat."])


def test_second_process_reuses_persistent_store_without_precompute(smol_engine, embeddings, tmp_path):
    kv_dir, chroma_dir = tmp_path / "kv", tmp_path / "chroma"
    first = FusionEngine(smol_engine.loaded, EngineConfig(cache_dir=kv_dir))
    FusionRAGChroma.from_texts(
        DOCS + EXTRA, embeddings, engine=first, persist_directory=str(chroma_dir), collection_name="persist"
    )
    assert first.counters["chunks_computed"] == 8
    # a "new process": new engine over the same KV directory, Chroma reopened from disk
    second = FusionEngine(smol_engine.loaded, EngineConfig(cache_dir=kv_dir))
    reopened = FusionRAGChroma(
        engine=second, persist_directory=str(chroma_dir), collection_name="persist", embedding_function=embeddings
    )
    message = rag_chain(
        reopened.as_retriever(search_kwargs={"k": 4}), ChatFusionRAG(engine=second, max_tokens=4)
    ).invoke("Where is the institute?")
    assert message.response_metadata["stats"]["chunks_reused"] == 4
    assert second.counters["chunks_computed"] == 0 and second.chunks.store.counts["disk"] == 4


def test_chroma_http_client(chroma_server, lc_engine, embeddings):
    store = FusionRAGChroma(
        engine=lc_engine, client=chroma_server, collection_name="http-docs", embedding_function=embeddings
    )
    ids = store.add_texts(DOCS)
    assert len(lc_engine.keys_for(DOCS)) >= len(DOCS)
    llm = ChatFusionRAG(engine=lc_engine, max_tokens=4)
    message = rag_chain(store.as_retriever(search_kwargs={"k": 2}), llm).invoke("What is the password?")
    assert message.response_metadata["stats"]["chunks_reused"] == 2
    store.delete(ids)
    assert lc_engine.keys_for(DOCS) == []
    store.delete_collection()


async def test_async_chain_does_not_block_the_event_loop(store, lc_engine):
    llm = ChatFusionRAG(engine=lc_engine, max_tokens=24)
    chain = rag_chain(store.as_retriever(search_kwargs={"k": 4}), llm)
    async with LoopTicker() as ticker:
        message = await chain.ainvoke("What is the password for the archive room?")
        pieces = [c async for c in llm.astream("Count to five.")]
    assert message.response_metadata["stats"]["chunks_reused"] == 4
    assert ticker.ticks > 10  # the loop kept running while the engine worked in a thread
    assert sum(1 for c in pieces if c.usage_metadata) == 1


def test_any_vector_store_with_learned_chunks(smol_engine, embeddings, tmp_path):
    """The LangChain tutorial's InMemoryVectorStore (no precompute at all): the model keeps the retrieved
    passages' KV from the first question and reuses it for the next one that retrieves them."""
    from langchain_core.vectorstores import InMemoryVectorStore

    engine = FusionEngine(smol_engine.loaded, EngineConfig(cache_dir=tmp_path / "kv", learn_min_chars=80))
    store = InMemoryVectorStore(embeddings)
    store.add_texts(DOCS + EXTRA)
    llm = ChatFusionRAG(engine=engine, max_tokens=4, learn_chunks=True)
    chain = rag_chain(store.as_retriever(search_kwargs={"k": 4}), llm)
    first = chain.invoke("What is the password for the archive room?").response_metadata["stats"]
    again = chain.invoke("What is the archive room's password?").response_metadata["stats"]
    assert first["chunks_reused"] == 0 and engine.counters["chunks_learned"] == 4
    assert again["chunks_reused"] == 4 and again["chunks_found"] == 4


def test_a_guarded_call_reports_the_guard_in_its_stats(store, lc_engine):
    llm = ChatFusionRAG(engine=lc_engine, max_tokens=4)
    retriever = store.as_retriever(search_kwargs={"k": 4})
    message = rag_chain(retriever, llm.bind(fidelity="guarded")).invoke("Who founded the Varn Institute?")
    stats = message.response_metadata["stats"]
    assert 0.0 < stats["guard_score"] < 1.0 and stats["escalated"] == (stats["selector"] == "full")
    assert "fidelity" in stats  # the shadow's figures, when sampled (None here: the rate is 0)
    plain = rag_chain(retriever, llm).invoke("Who founded the Varn Institute?").response_metadata["stats"]
    assert plain["guard_score"] is None and not plain["escalated"]
