"""`make demo`: a LangChain RAG chain over FusionRAGChroma + ChatFusionRAG, on the bundled SmolLM2.

Documents are embedded and their KV precomputed once, into a persistent directory
(.cache/demo); a standard LCEL chain then answers three questions, streaming, and each
answer is followed by its TTFT with chunk-KV reuse and with a full prefill of the same
prompt. Run it twice: the second run computes nothing and reuses everything from disk.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import EngineConfig, FusionEngine, default_model_path
from .demo_corpus import PASSAGES, QUESTIONS


def main(model: str | None = None, device: str = "auto", cache_dir: str | Path = ".cache/demo") -> int:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    from .langchain import ChatFusionRAG, FusionRAGChroma, MiniLMEmbeddings

    class LastStats(BaseCallbackHandler):
        """Keeps the chat model's fusion stats: the chain itself ends in a plain string."""

        stats: dict[str, Any] = {}

        def on_llm_end(self, response, **kwargs: Any) -> None:
            self.stats = response.generations[0][0].message.response_metadata.get("stats", {})

    cache_dir = Path(cache_dir)
    t = time.perf_counter()
    engine = FusionEngine.from_pretrained(
        model or default_model_path(), device=device, config=EngineConfig(cache_dir=cache_dir)
    )
    print(
        f"model: {engine.model_name} on {engine.device} ({engine.model.dtype}), "
        f"loaded in {time.perf_counter() - t:.1f} s"
    )
    store = FusionRAGChroma(
        engine=engine,
        persist_directory=str(cache_dir / "chroma"),
        collection_name="demo",
        embedding_function=MiniLMEmbeddings(),
    )
    stored = len(store.get(include=[])["ids"])
    if stored < len(PASSAGES):
        t = time.perf_counter()
        store.add_texts(PASSAGES, ids=[f"passage-{i}" for i in range(len(PASSAGES))])
        print(
            f"indexed {len(PASSAGES)} passages: embedded + KV precomputed in {time.perf_counter() - t:.1f} s "
            f"({engine.counters['chunks_computed']} chunks computed)"
        )
    else:
        print(f"reusing {stored} passages from {cache_dir}: nothing to embed or precompute")

    def format_docs(docs) -> str:
        return "\n\n".join(doc.page_content for doc in docs)

    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer the question in one sentence, using only this context:\n\n{context}"),
            ("human", "{question}"),
        ]
    )
    retriever = store.as_retriever(search_kwargs={"k": 4})
    stats = LastStats()

    def chain(selector: str):
        llm = ChatFusionRAG(engine=engine, max_tokens=64, selector=selector, callbacks=[stats])
        return (
            {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
        )

    fused, full = chain("fusionrag"), chain("full")
    print()
    for question in QUESTIONS:
        print(f"Q: {question}\nA: ", end="", flush=True)
        for piece in fused.stream(question):
            print(piece, end="", flush=True)
        reuse = stats.stats
        full.invoke(question)
        baseline = stats.stats
        print(
            f"\n   [TTFT fused {reuse['ttft_ms']:.0f} ms vs full prefill {baseline['ttft_ms']:.0f} ms "
            f"({baseline['ttft_ms'] / reuse['ttft_ms']:.1f}x) | chunks reused {reuse['chunks_reused']}/"
            f"{reuse['chunks_found']} | {reuse['tokens_recomputed']} of "
            f"{reuse['tokens_recomputed'] + reuse['tokens_reused']} chunk tokens recomputed]\n"
        )
    computed = engine.counters["chunks_computed"]
    print(f"chunk KV computed in this run: {computed}" + ("" if computed else " (all reused from disk)"))
    return 0
