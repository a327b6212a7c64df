"""POST /v1/chat/completions and /v1/completions: a request becomes an engine stream; its pieces become
one response or server-sent events. A client that goes away cancels its request at the next step,
whether it streamed or waited for the whole answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

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
    choice_settings,
    completion_prompt,
    completion_response,
    merge_choices,
    stats_json,
    stream_chunk,
    usage_json,
)
from .schemas import ChatCompletionRequest, CompletionRequest
from .tool_stream import ToolCallStream, tool_stream_chunks


def request_salt(request: Request, salt: str | None) -> str | None:
    """The cache space of a request: its API key's (with several keys) and its own cache_salt."""
    space = getattr(request.state, "key_space", "")
    return f"{space}|{salt or ''}" if space or salt else None


def in_thread(fn):
    """Engine calls that may wait for the scheduler's lock never run on the event loop."""
    return asyncio.get_running_loop().run_in_executor(ASYNC_CALL_THREADS, fn)


def close_soon(source: Iterator) -> None:
    """Cancel a request without waiting (safe inside a cancelled task: nothing is awaited)."""
    close = getattr(source, "close", None)
    if close is not None:
        ASYNC_CALL_THREADS.submit(close)


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def register(app: FastAPI, engine: FusionEngine, model_name: str, metrics: Metrics) -> None:
    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           "model_not_found", "model")  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        try:
            prompt, settings = chat_prompt(body, engine.tokenizer)
        except (ValueError, KeyError, TypeError) as err:
            raise APIError(400, f"messages: {err}", "invalid_value", "messages") from None
        settings["cache_salt"] = request_salt(request, body.cache_salt)
        ids = ResponseIds("chat", model_name)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        tools = body.tools if body.tool_choice != "none" else None
        if body.stream:
            names = {t["function"]["name"] for t in tools} if tools else None
            return await stream(ids, prompt, settings, include_usage, names)
        results = await asyncio.gather(
            *(complete(request, prompt, choice_settings(settings, i)) for i in range(body.n))
        )
        return merge_choices([chat_response(ids, text, last, tools, lps, token_text) for text, last, lps in results])

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        prompt, settings = completion_prompt(body)
        settings["cache_salt"] = request_salt(request, body.cache_salt)
        ids = ResponseIds("completion", model_name)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await stream(ids, prompt, settings, include_usage)
        results = await asyncio.gather(
            *(complete(request, prompt, choice_settings(settings, i)) for i in range(body.n))
        )
        return merge_choices([completion_response(ids, text, last, lps, token_text) for text, last, lps in results])

    def token_text(token: int) -> str:
        return engine.tokenizer.decode([token])

    async def complete(request: Request, prompt, settings: dict[str, Any]) -> tuple[str, GenerationChunk, list | None]:
        source = await in_thread(lambda: metrics.observe(engine.stream(prompt, **settings)))
        collect = asyncio.ensure_future(_collect(source))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not collect.done():  # the client went away (or this task was cancelled): free its slot
                close_soon(source)
            gone.cancel()
        if not collect.done():
            collect.cancel()
            raise ClientDisconnect()
        pieces = collect.result()
        logprobs = [lp for p in pieces for lp in p.logprobs] if settings.get("logprobs") is not None else None
        return "".join(p.text for p in pieces), pieces[-1], logprobs

    async def stream(ids: ResponseIds, prompt, settings: dict[str, Any], include_usage: bool, tools=None):
        source = await in_thread(lambda: metrics.observe(engine.stream(prompt, **settings)))
        pieces = iterate_in_thread(source)
        try:  # the first piece before the response starts: a bad request still gets its status code
            first = await anext(pieces)
        except Exception as exc:  # noqa: BLE001 - mapped to its status
            close_soon(source)
            await pieces.aclose()
            raise as_api_error(exc) from None
        decode = token_text if settings.get("logprobs") is not None else None
        calls = ToolCallStream(tools) if tools else None
        body = events(ids, first, pieces, source, include_usage, decode, calls)
        return StreamingResponse(body, media_type="text/event-stream")

    def chunks(ids, piece: GenerationChunk, first: bool, decode, offset: int, calls: ToolCallStream | None):
        base = stream_chunk(ids, piece, first=first, decode=decode, offset=offset)
        if calls is None:
            return [base]
        return tool_stream_chunks(base, piece.text, piece.finish_reason is not None, first, calls)

    async def events(ids, first, pieces: AsyncIterator, source: Iterator, include_usage: bool, decode, calls):
        last, offset = first, len(first.text)
        try:
            for chunk in chunks(ids, first, True, decode, 0, calls):
                yield sse(chunk)
            async for piece in pieces:
                last = piece
                for chunk in chunks(ids, piece, False, decode, offset, calls):
                    yield sse(chunk)
                offset += len(piece.text)
            if include_usage and last.usage is not None:
                yield sse(
                    {**stream_chunk(ids, None), "usage": usage_json(last.usage), "fusionrag": stats_json(last.stats)}
                )
            yield "data: [DONE]\n\n"
        except Exception as exc:  # noqa: BLE001 - mid-stream: the status line is gone, the error is an event
            err = as_api_error(exc)
            yield sse(errors.error_body(err.status, err.message, err.code))
            yield "data: [DONE]\n\n"
        finally:
            close_soon(source)  # a client that went away frees its slot at the next step
            with anyio.CancelScope(shield=True):
                await pieces.aclose()


async def _collect(source: Iterator[GenerationChunk]) -> list[GenerationChunk]:
    return [piece async for piece in iterate_in_thread(source)]


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (its body was read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
