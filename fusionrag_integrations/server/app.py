"""`fusionrag serve`: the engine behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

Every request goes to the engine's continuous-batching scheduler, so concurrent clients are decoded
together; streams are server-sent events that end with `data: [DONE]`, and a client that goes away
cancels its request (its slot frees at the next step). Errors are OpenAI-style JSON (errors.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from ..engine import FusionEngine
from ..integrations.common import ASYNC_CALL_THREADS, iterate_in_thread
from ..outputs import GenerationChunk
from . import errors
from .errors import APIError, as_api_error
from .metrics import Metrics
from .openai_format import (
    ResponseIds,
    chat_prompt,
    chat_response,
    completion_prompt,
    completion_response,
    stats_json,
    stream_chunk,
    usage_json,
)
from .schemas import ChatCompletionRequest, ChunkKeysRequest, ChunksRequest, CompletionRequest, ForgetRequest

MAX_BODY_BYTES = 8 << 20


def create_app(
    engine: FusionEngine, model_name: str, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES
) -> FastAPI:
    app = FastAPI(title="fusionrag", docs_url=None, redoc_url=None)
    errors.install(app)
    metrics = Metrics(engine)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        """413 before the body is read when its declared size is over the limit; a chunked body is
        counted as it arrives."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return errors.error_response(413, f"request body over {max_body_bytes} bytes", "body_too_large")
        if declared is None and request.method in ("POST", "PUT", "DELETE"):
            size = 0
            async for part in request.stream():
                size += len(part)
                if size > max_body_bytes:
                    return errors.error_response(413, f"request body over {max_body_bytes} bytes", "body_too_large")
        return await call_next(request)

    def authorised(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise APIError(401, "invalid API key", "invalid_api_key")

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           "model_not_found", "model")  # fmt: skip

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "fusionrag"}],
        }

    @app.get("/metrics")
    async def metrics_page():
        return metrics.response()

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    async def chat(body: ChatCompletionRequest):
        check_model(body.model)
        try:
            prompt, settings = chat_prompt(body, engine.tokenizer)
        except (ValueError, KeyError, TypeError) as err:
            raise APIError(400, f"messages: {err}", "invalid_value", "messages") from None
        ids = ResponseIds("chat", model_name)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            return await stream(ids, prompt, settings, include_usage)
        text, last = await complete(prompt, settings)
        return chat_response(ids, text, last, body.tools if body.tool_choice != "none" else None)

    @app.post("/v1/completions", dependencies=[Depends(authorised)])
    async def completions(body: CompletionRequest):
        check_model(body.model)
        prompt, settings = completion_prompt(body)
        ids = ResponseIds("completion", model_name)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await stream(ids, prompt, settings, include_usage)
        text, last = await complete(prompt, settings)
        return completion_response(ids, text, last)

    @app.post("/v1/chunks", dependencies=[Depends(authorised)])
    async def add_chunks(body: ChunksRequest):
        """Precompute (idempotent): the keys, and how many were computed now vs already cached; with
        `stream`, a progress event after each batch first (a bulk add over a slow link shows progress and
        its finished batches stay stored if the client goes away)."""
        if body.stream:
            return StreamingResponse(ingest_events(body), media_type="text/event-stream")
        return await ingest_batch(body.texts, body.neighbors)

    async def ingest_batch(texts: list[str], neighbors: list[list[str]] | None) -> dict:
        before = set(await in_thread(lambda: engine.keys_for(texts)))
        keys = await in_thread(lambda: engine.precompute(texts, None, neighbors, False))
        computed = len(set(keys) - before)
        return {"object": "list", "keys": keys, "computed": computed, "cached": len(set(keys)) - computed}

    async def ingest_events(body: ChunksRequest):
        total, step = len(body.texts), body.batch_size
        result = {"object": "list", "keys": [], "computed": 0, "cached": 0}
        try:
            for start in range(0, total, step):
                nbrs = body.neighbors[start : start + step] if body.neighbors is not None else None
                part = await ingest_batch(body.texts[start : start + step], nbrs)
                result = {**result, "keys": result["keys"] + part["keys"], "computed": result["computed"] +
                          part["computed"], "cached": result["cached"] + part["cached"]}  # fmt: skip
                done = min(start + step, total)
                yield sse({"object": "chunks.progress", "done": done, "total": total,
                           "computed": result["computed"], "cached": result["cached"]})  # fmt: skip
            yield sse(result)
            yield "data: [DONE]\n\n"
        except Exception as exc:  # noqa: BLE001 - mid-stream: the status line is gone, the error is an event
            err = as_api_error(exc)
            yield sse(errors.error_body(err.status, err.message, err.code))

    @app.post("/v1/chunks/keys", dependencies=[Depends(authorised)])
    async def chunk_keys(body: ChunkKeysRequest) -> dict:
        """Every stored key (standalone and context-aware) of these texts."""
        return {"object": "list", "keys": await in_thread(lambda: engine.keys_for(body.texts))}

    @app.delete("/v1/chunks", dependencies=[Depends(authorised)])
    async def forget_chunks(body: ForgetRequest) -> dict:
        keys = list(body.keys or []) + (await in_thread(lambda: engine.keys_for(body.texts)) if body.texts else [])
        removed = await in_thread(lambda: engine.forget(keys)) if keys else 0
        return {"object": "list", "removed": removed}

    async def complete(prompt, settings: dict[str, Any]) -> tuple[str, GenerationChunk]:
        pieces = await in_thread(lambda: list(metrics.observe(engine.stream(prompt, **settings))))
        return "".join(p.text for p in pieces), pieces[-1]

    def in_thread(fn):
        """Engine calls that may wait for the scheduler's lock (held for a whole step) never run on the
        event loop: it would stall every other stream and request for that step."""
        return asyncio.get_running_loop().run_in_executor(ASYNC_CALL_THREADS, fn)

    async def stream(ids: ResponseIds, prompt, settings: dict[str, Any], include_usage: bool):
        source = await in_thread(lambda: metrics.observe(engine.stream(prompt, **settings)))
        pieces = iterate_in_thread(source)
        try:  # the first piece before the response starts: a bad request still gets its status code
            first = await anext(pieces)
        except Exception as exc:  # noqa: BLE001 - mapped to its status
            await pieces.aclose()
            raise as_api_error(exc) from None
        return StreamingResponse(events(ids, first, pieces, source, include_usage), media_type="text/event-stream")

    async def events(ids, first, pieces: AsyncIterator, source: Iterator, include_usage: bool):
        last = first
        try:
            yield sse(stream_chunk(ids, first, first=True))
            async for piece in pieces:
                last = piece
                yield sse(stream_chunk(ids, piece))
            if include_usage and last.usage is not None:
                yield sse(
                    {**stream_chunk(ids, None), "usage": usage_json(last.usage), "fusionrag": stats_json(last.stats)}
                )
            yield "data: [DONE]\n\n"
        except Exception as exc:  # noqa: BLE001 - mid-stream: the status line is gone, the error is an event
            err = as_api_error(exc)
            yield sse(errors.error_body(err.status, err.message, err.code))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                await in_thread(close)  # a client that went away frees its slot at the next step
            await pieces.aclose()

    app.state.metrics = metrics
    return app


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"
