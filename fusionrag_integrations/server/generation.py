"""POST /v1/chat/completions and /v1/completions: a request becomes engine streams (n per prompt; a
completions request may hold a list of prompts, answered together as vLLM does); their pieces become one
response or server-sent events. A client that goes away cancels its request at the next step, whether
it streamed or waited for the whole answer; a choice that fails cancels the request's other choices."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from .engine_calls import EngineCalls, close_soon, request_salt
from .errors import PROMPT_FIELD, APIError
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


def register(app: FastAPI, calls: EngineCalls) -> None:
    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        calls.check_model(body.model)
        try:
            prompt, settings = chat_prompt(body, calls.engine.tokenizer)
        except (ValueError, KeyError, TypeError) as err:
            raise APIError(400, f"messages: {err}", "invalid_value", "messages") from None
        settings["cache_salt"] = request_salt(request, body.cache_salt)
        ids = ResponseIds("chat", calls.model_name)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        tools = body.tools if body.tool_choice != "none" else None
        if body.stream:
            names = {t["function"]["name"] for t in tools} if tools else None
            return await stream(ids, [prompt], settings, include_usage, body.n, names)
        results = await calls.complete_all(request, [prompt], settings, body.n)
        responses = [chat_response(ids, text, last, tools, lps, calls.token_text) for text, last, lps in results]
        return merge_choices(responses, body.n)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        calls.check_model(body.model)
        PROMPT_FIELD.set("prompt")  # a prompt too long is this field's error here
        prompts, settings = completion_prompts(body)
        settings["cache_salt"] = request_salt(request, body.cache_salt)
        ids = ResponseIds("completion", calls.model_name)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await stream(ids, prompts, settings, include_usage, body.n)
        results = await calls.complete_all(request, prompts, settings, body.n)
        responses = [completion_response(ids, text, last, lps, calls.token_text) for text, last, lps in results]
        return merge_choices(responses, body.n)

    async def stream(
        ids: ResponseIds, prompts: list, settings: dict[str, Any], include_usage: bool, n: int, tools=None
    ):
        sources = await calls.open_choices(prompts, settings, n)
        choices = ChoiceStreams(sources, close_soon, n)
        await choices.start()
        decode = calls.token_text if settings.get("logprobs") is not None else None
        body = choices.events(ids, include_usage, decode, tools)
        return StreamingResponse(body, media_type="text/event-stream")
