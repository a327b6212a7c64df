"""`make demo`: a LangChain RAG chain over FusionRAGChroma + ChatFusionRAG, on the bundled SmolLM2.

Documents are embedded and their KV precomputed once, into a persistent directory
(.cache/demo); a standard LCEL chain then answers three questions twice, with chunk-KV reuse
and with a full prefill of the same prompt, and prints both answers side by side with their
time to first token and where their words differ: whatever the small model gets wrong, the
reader sees whether reuse changed it. Run it twice: the second run computes nothing.
"""

from __future__ import annotations

import difflib
import time
from pathlib import Path
from typing import Any

from . import EngineConfig, FusionEngine, default_model_path
from .demo_corpus import PASSAGES, QUESTIONS


def whole_sentences(text: str) -> str:
    """The answer up to its last sentence end (generation stops at a token budget, often mid-sentence)."""
    text = " ".join(text.split())
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    if text.endswith((".", "!", "?")) or cut < 0:
        return text
    return text[: cut + 1]


def compare_words(fused: str, full: str) -> str:
    """'same answer', or where the two answers' words differ (the first differing span of each)."""
    a, b = fused.split(), full.split()
    if a == b:
        return "same answer, word for word"
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    changes = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    _, i1, i2, j1, j2 = changes[0]
    span = lambda words: " ".join(words[:8]) + (" ..." if len(words) > 8 else "") or "-"  # noqa: E731
    same = sum(block.size for block in matcher.get_matching_blocks())
    return (
        f"{same} of {max(len(a), len(b))} words the same; first difference: reuse "
        f"'{span(a[i1:i2])}' vs full '{span(b[j1:j2])}'"
    )


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

    cache_dir = Path(cache_dir).expanduser()
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

    def chain(selector: str | None):  # None: the engine's default (benchmarks/RESULTS.md, "Quality defaults")
        llm = ChatFusionRAG(engine=engine, max_tokens=64, stop=["\n\n"], selector=selector, callbacks=[stats])
        return (
            {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
        )

    fused, full = chain(None), chain("full")
    fused.invoke(QUESTIONS[0])  # warm-up: the first call of a process pays one-time costs; not timed
    print("\n(one untimed warm-up call first; each question is answered twice: chunk-KV reuse, then a full prefill)\n")
    for question in QUESTIONS:
        fused_answer, reuse = whole_sentences(fused.invoke(question)), stats.stats
        full_answer, baseline = whole_sentences(full.invoke(question)), stats.stats
        print(f"Q: {question}")
        print(f"  reuse ({reuse['ttft_ms']:4.0f} ms to first token): {fused_answer}")
        print(f"  full  ({baseline['ttft_ms']:4.0f} ms to first token): {full_answer}")
        print(
            f"  -> {compare_words(fused_answer, full_answer)}; {baseline['ttft_ms'] / reuse['ttft_ms']:.1f}x faster "
            f"first token; {reuse['chunks_reused']}/{reuse['chunks_found']} chunks reused, "
            f"{reuse['tokens_recomputed']} of {reuse['tokens_recomputed'] + reuse['tokens_reused']} of their "
            "tokens recomputed\n"
        )
    print("A wrong answer in both lines is the 135M model's reading, not the reuse: compare the two.")
    computed = engine.counters["chunks_computed"]
    print(f"chunk KV computed in this run: {computed}" + ("" if computed else " (all reused from disk)"))
    return 0
