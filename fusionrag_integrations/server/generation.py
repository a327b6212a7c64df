"""POST /v1/chat/completions and /v1/completions: a request becomes engine streams (n per prompt; a
completions request may hold a list of prompts, answered together as vLLM does); their pieces become one
response or server-sent events. A client that goes away cancels its request at the next step, whether
it streamed or waited for the whole answer; a choice that fails cancels the request's other choices."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from ..engine import FusionEngine
from ..outputs import GenerationChunk
from ..threads import ASYNC_CALL_THREADS, iterate_in_thread
from .errors import PROMPT_FIELD, APIError
from .metrics import Metrics
from .openai_format import (
    ResponseIds,
    chat_prompt,
    chat_response,
    completion_prompts,
    completion_response,
    merge_choices,
)
from .schemas import ChatCompletionRequest, CompletionRequest
from .streaming import ChoiceStreams


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


def register(app: FastAPI, engine: FusionEngine, model_name: str, metrics: Metrics) -> None:
    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(
                404, f"the model {name!r} does not exist; this server serves {model_name!r}", "model_not_found", "model"
            )

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
            return await stream(ids, [prompt], settings, include_usage, body.n, names)
        results = await complete_all(request, [prompt], settings, body.n)
        responses = [chat_response(ids, text, last, tools, lps, token_text) for text, last, lps in results]
        return merge_choices(responses, body.n)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        PROMPT_FIELD.set("prompt")  # a prompt too long is this field's error here
        prompts, settings = completion_prompts(body)
        settings["cache_salt"] = request_salt(request, body.cache_salt)
        ids = ResponseIds("completion", model_name)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await stream(ids, prompts, settings, include_usage, body.n)
        results = await complete_all(request, prompts, settings, body.n)
        responses = [completion_response(ids, text, last, lps, token_text) for text, last, lps in results]
        return merge_choices(responses, body.n)

    def token_text(token: int) -> str:
        return engine.tokenizer.decode([token])

    async def open_choices(prompts: list, settings: dict[str, Any], n: int) -> list[Iterator[GenerationChunk]]:
        """n answers' streams per prompt (engine.stream_choices: one prefill for a prompt's n), in order,
        each observed by the metrics. A prompt the engine refuses closes the streams opened before it."""
        opened: list[Iterator[GenerationChunk]] = []
        try:
            for prompt in prompts:
                streams = await in_thread(lambda p=prompt: engine.stream_choices(p, n, **settings))
                opened += [metrics.observe(s) for s in streams]
        except BaseException:
            for source in opened:
                close_soon(source)
            raise
        return opened

    async def complete_all(request: Request, prompts: list, settings: dict[str, Any], n: int) -> list[tuple]:
        sources = await open_choices(prompts, settings, n)
        tasks = [asyncio.ensure_future(complete(request, s, settings)) for s in sources]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:  # one choice failed (or the client left): the others stop at the next step
            for task in tasks:
                task.cancel()
            raise

    async def complete(request: Request, source, settings: dict[str, Any]) -> tuple[str, GenerationChunk, list | None]:
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

    async def stream(
        ids: ResponseIds, prompts: list, settings: dict[str, Any], include_usage: bool, n: int, tools=None
    ):
        sources = await open_choices(prompts, settings, n)
        choices = ChoiceStreams(sources, close_soon, n)
        await choices.start()
        decode = token_text if settings.get("logprobs") is not None else None
        body = choices.events(ids, include_usage, decode, tools)
        return StreamingResponse(body, media_type="text/event-stream")


async def _collect(source: Iterator[GenerationChunk]) -> list[GenerationChunk]:
    return [piece async for piece in iterate_in_thread(source)]


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (its body was read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
