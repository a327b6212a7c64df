"""POST /v1/responses: OpenAI's Responses API over the chat path (responses_format.py says what it maps
and what it refuses). Streamed, the answer comes as the API's typed events: response.created, the output
item and its text part opened, a response.output_text.delta per piece, each closed, then
response.completed (or response.incomplete when max_output_tokens cut it). With tools offered the answer
is read whole before its items are sent (a call is told from text only once it is complete), as a
message item and function_call items with their arguments' events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ..outputs import GenerationChunk
from .engine_calls import EngineCalls, close_soon, request_salt
from .errors import PROMPT_FIELD, APIError, as_api_error
from .openai_format import chat_prompt
from .responses_format import ResponseObject, ResponsesRequest, message_item, new_id, output_items
from .streaming import ChoiceStreams


def register(app: FastAPI, calls: EngineCalls) -> None:
    @app.post("/v1/responses")
    async def responses(body: ResponsesRequest, request: Request):
        calls.check_model(body.model)
        PROMPT_FIELD.set("input")  # a prompt too long is this field's error here
        chat = body.as_chat()
        try:
            prompt, settings = chat_prompt(chat, calls.engine.tokenizer)
        except (ValueError, KeyError, TypeError) as err:
            raise APIError(400, f"input: {err}", "invalid_value", "input") from None
        settings["cache_salt"] = request_salt(request, body.cache_salt)
        response = ResponseObject(body, calls.model_name)
        tools = body.tools if body.tool_choice != "none" else None
        if not body.stream:
            [(text, last, _)] = await calls.complete_all(request, [prompt], settings, 1)
            return response.finished(output_items(text, tools, new_id("msg")), last)
        choice = ChoiceStreams(await calls.open_choices([prompt], settings, 1), close_soon, 1)
        await choice.start()  # a bad request still gets its status code
        return StreamingResponse(Events(response, choice, tools).stream(), media_type="text/event-stream")


class Events:
    """One streamed response's server-sent events, numbered in order."""

    def __init__(self, response: ResponseObject, choice: ChoiceStreams, tools: list[dict] | None) -> None:
        self.response, self.choice, self.tools = response, choice, tools
        self.first, self.pieces = choice.firsts[0], choice.pieces[0]
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # the output, once answered
        self.last = self.first

    def event(self, kind: str, **fields: Any) -> str:
        body = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n"

    async def stream(self) -> AsyncIterator[str]:
        try:
            yield self.event("response.created", response=self.response.in_progress())
            yield self.event("response.in_progress", response=self.response.in_progress())
            async for event in self.whole_items() if self.tools else self.text_as_it_comes():
                yield event
            done = self.response.finished(self.items, self.last)
            yield self.event(f"response.{done['status']}", response=done)
        except Exception as exc:  # noqa: BLE001 - mid-stream: the status line is gone, the error is an event
            err = as_api_error(exc)
            yield self.event("error", code=err.code, message=err.message, param=err.param)
        finally:
            await self.choice.shut()  # a finished stream ignores it; a client that left frees its slot

    async def pieces_from_first(self) -> AsyncIterator[GenerationChunk]:
        yield self.first
        async for piece in self.pieces:
            yield piece

    async def text_as_it_comes(self) -> AsyncIterator[str]:
        """The message item opened, a delta per piece, then closed."""
        item_id, text = new_id("msg"), ""
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        yield self.event("response.output_item.added", output_index=0, item=_opened(message_item(item_id, "")))
        yield self.event("response.content_part.added", **where, part=_part(""))
        async for piece in self.pieces_from_first():
            self.last = piece
            if piece.text:
                text += piece.text
                yield self.event("response.output_text.delta", **where, delta=piece.text, logprobs=[])
        self.items = [message_item(item_id, text)]
        yield self.event("response.output_text.done", **where, text=text, logprobs=[])
        yield self.event("response.content_part.done", **where, part=_part(text))
        yield self.event("response.output_item.done", output_index=0, item=self.items[0])

    async def whole_items(self) -> AsyncIterator[str]:
        """The answer read whole, then each output item's events: opened, its content or arguments, closed."""
        text = ""
        async for piece in self.pieces_from_first():
            text, self.last = text + piece.text, piece
        self.items = output_items(text, self.tools, new_id("msg"))
        for index, item in enumerate(self.items):
            yield self.event("response.output_item.added", output_index=index, item=_opened(item))
            if item["type"] == "message":
                text = item["content"][0]["text"]
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                yield self.event("response.content_part.added", **where, part=_part(""))
                yield self.event("response.output_text.delta", **where, delta=text, logprobs=[])
                yield self.event("response.output_text.done", **where, text=text, logprobs=[])
                yield self.event("response.content_part.done", **where, part=_part(text))
            else:
                at = {"item_id": item["id"], "output_index": index}
                yield self.event("response.function_call_arguments.delta", **at, delta=item["arguments"])
                yield self.event("response.function_call_arguments.done", **at, arguments=item["arguments"])
            yield self.event("response.output_item.done", output_index=index, item=item)


def _opened(item: dict[str, Any]) -> dict[str, Any]:
    """An output item as its `added` event shows it: in progress, nothing in it yet."""
    empty: dict[str, Any] = {"content": []} if item["type"] == "message" else {"arguments": ""}
    return {**item, **empty, "status": "in_progress"}


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
