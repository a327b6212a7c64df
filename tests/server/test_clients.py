"""Complete remote setups, unchanged framework code: our Chroma stores precompute through the server
(`server=`), and LangChain `ChatOpenAI` / LlamaIndex `OpenAILike` pointed at it answer with every
retrieved chunk reused (the server's metrics count what each query found and reused)."""

from __future__ import annotations

import re
import uuid

import httpx

from fusionrag_integrations.demo_corpus import PASSAGES
from tests.server.conftest import API_KEY, MODEL


def chunk_counts(server: str) -> dict[str, float]:
    page = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    return {k: float(v) for k, v in re.findall(r'^fusionrag_chunks_total\{kind="(\w+)"\} (\S+)', page, re.M)}


def delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def test_langchain_chat_openai_over_our_chroma_store(server, embeddings):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough
    from langchain_openai import ChatOpenAI

    from fusionrag_integrations.langchain import FusionRAGChroma

    store = FusionRAGChroma(server=server, api_key=API_KEY, embedding_function=embeddings,
                            collection_name=f"remote-{uuid.uuid4().hex[:8]}")  # fmt: skip
    store.add_texts(PASSAGES)  # embedded here, KV precomputed on the server
    keys = httpx.post(f"{server}/v1/chunks/keys", json={"texts": PASSAGES},
                      headers={"Authorization": f"Bearer {API_KEY}"}).json()["keys"]  # fmt: skip
    assert len(keys) >= len(PASSAGES)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from the passages."), ("human", "Passages:\n{context}\n\nQuestion: {question}")]
    )
    llm = ChatOpenAI(base_url=f"{server}/v1", api_key=API_KEY, model=MODEL, temperature=0, max_tokens=12)
    retriever = store.as_retriever(search_kwargs={"k": 3})
    format_docs = lambda docs: "\n\n".join(d.page_content for d in docs)  # noqa: E731
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm
    before = chunk_counts(server)
    message = chain.invoke("Which planets did Voyager 2 visit?")
    counted = delta(before, chunk_counts(server))
    assert message.content and counted["found"] == 3 and counted["reused"] == 3
    assert message.usage_metadata["input_token_details"]["cache_read"] > 0
    streamed = "".join((chain | StrOutputParser()).stream("Which planets did Voyager 2 visit?"))
    assert streamed == message.content  # greedy: the stream says what invoke said
    store.delete(store.get()["ids"][:1])  # forgets the first passage's KV on the server
    assert len(httpx.post(f"{server}/v1/chunks/keys", json={"texts": PASSAGES[:1]},
                          headers={"Authorization": f"Bearer {API_KEY}"}).json()["keys"]) == 0  # fmt: skip


def test_llamaindex_openai_like_query_engine(server, tmp_path):
    import chromadb
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.llms.openai_like import OpenAILike

    from fusionrag_integrations.llamaindex import FusionRAGChromaVectorStore, MiniLMEmbedding

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    store = FusionRAGChromaVectorStore(server=server, api_key=API_KEY,
                                       chroma_collection=client.get_or_create_collection("space"))  # fmt: skip
    index = VectorStoreIndex.from_documents([Document(text=p) for p in PASSAGES],
                                            storage_context=StorageContext.from_defaults(vector_store=store),
                                            embed_model=MiniLMEmbedding())  # fmt: skip
    llm = OpenAILike(api_base=f"{server}/v1", api_key=API_KEY, model=MODEL, is_chat_model=True,
                     context_window=8192, max_tokens=12, temperature=0)  # fmt: skip
    before = chunk_counts(server)
    response = index.as_query_engine(llm=llm, similarity_top_k=3).query("Where does the James Webb telescope orbit?")
    counted = delta(before, chunk_counts(server))
    assert str(response).strip() and len(response.source_nodes) == 3
    assert counted["found"] == 3 and counted["reused"] == 3 and counted["computed"] == 0
