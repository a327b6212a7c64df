"""Fusion stats on the Response a LlamaIndex query engine returns: `response.metadata["fusionrag"]`.

A query engine builds its Response from the synthesizer's text and the source nodes; the LLM's
`raw` output (where FusionRAGLLM puts usage and stats) never reaches it. So an instrumentation
event handler (LlamaIndex's own mechanism) opens a record at every QueryStartEvent, FusionRAGLLM
appends each generation's stats to the records open in the current context, and QueryEndEvent
writes them into the response's metadata: per LLM call, and summed over the query's calls.
Context variables carry the open records through threads and asyncio tasks (asyncio.to_thread and
the adapters' iterate_in_thread copy the context), so concurrent queries never mix their stats.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import Any

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.query import QueryEndEvent, QueryStartEvent

KEY = "fusionrag"
_SUMMED = (
    "chunks_found",
    "chunks_reused",
    "chunks_hot",
    "chunks_computed",
    "chunks_recomputed",
    "tokens_reused",
    "tokens_recomputed",
    "prefix_tokens_reused",
    "ttft_ms",
    "prefill_ms",
    "decode_ms",
)
_open: ContextVar[tuple[list[dict], ...]] = ContextVar("fusionrag_open_queries", default=())
_installed = threading.Lock()
_handler: QueryStatsHandler | None = None


def record(stats: dict[str, Any]) -> None:
    """Called by FusionRAGLLM once per generation: joins every query open in this context."""
    for calls in _open.get():
        calls.append(stats)


def summary(calls: list[dict]) -> dict[str, Any]:
    """The query's totals (chunk and token counts, times) and its per-call stats."""
    return {"llm_calls": len(calls), **{k: sum(c.get(k) or 0 for c in calls) for k in _SUMMED}, "calls": calls}


class QueryStatsHandler(BaseEventHandler):
    @classmethod
    def class_name(cls) -> str:
        return "FusionRAGQueryStatsHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, QueryStartEvent):  # (a query that raised never ended: keep the stack short)
            _open.set((*_open.get()[-7:], []))
        elif isinstance(event, QueryEndEvent) and _open.get():
            *outer, calls = _open.get()
            _open.set(tuple(outer))
            response = event.response
            if calls and hasattr(response, "metadata"):
                response.metadata = {**(response.metadata or {}), KEY: summary(calls)}


def install() -> None:
    """Add the handler to LlamaIndex's root dispatcher, once per process."""
    global _handler
    with _installed:
        if _handler is None:
            _handler = QueryStatsHandler()
            get_dispatcher().add_event_handler(_handler)
