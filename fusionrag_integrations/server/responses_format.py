"""OpenAI's Responses API in the terms of the chat endpoint: a request's `input` items, `instructions`,
function tools and `text.format` become a chat request (validated by the chat schema, answered by the same
engine path), and an answer becomes a `response` object: a message item and function_call items.

What the server does not do is refused by name, as on the other endpoints: stored responses
(`previous_response_id`, `conversation`, `store: true`, `background`), hosted tools (web or file search,
computer use, ...), images and files in the input, reasoning settings and summaries. Nothing is stored,
so a response cannot be retrieved later."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from ..integrations.tools import parse_tool_calls
from ..outputs import GenerationChunk, GenerationStats
from .errors import APIError
from .schemas import METADATA, ChatCompletionRequest, Float, Int, _Body, refuse_what_is_not_honoured

# the Responses API's fields we do not honour, with the values that ask for nothing (None: not sent)
RESPONSES_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "store": (None, False),  # OpenAI's default is true; a stored response is what we never keep
    "background": (None, False),
    "previous_response_id": (None,),
    "conversation": (None,),
    "include": (None, []),
    "reasoning": (None,),
    "truncation": (None, "disabled"),
    "max_tool_calls": (None,),
    "prompt": (None,),  # a stored prompt template
    "service_tier": (None, "auto", "default"),
    "moderation": (None,),
    "context_management": (None,),
    "prompt_cache_options": (None,),
    "prompt_cache_retention": (None,),
    "parallel_tool_calls": (None, True),
    "top_logprobs": (None, 0),
    "stream_options": (None, {"include_obfuscation": False}),  # streamed events carry no obfuscation
}
TEXT_PARTS = ("input_text", "output_text", "text")


class ResponsesRequest(_Body):
    @model_validator(mode="before")
    @classmethod
    def _refuse_what_is_not_honoured(cls, data: Any) -> Any:
        return refuse_what_is_not_honoured(data, cls.model_fields, RESPONSES_NEUTRAL, METADATA)

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: Int | None = Field(None, ge=1)
    temperature: Float = Field(1.0, ge=0.0, le=2.0)
    top_p: Float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False
    text: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    # the chat endpoint's extensions, passed through as they are: vLLM's and ours
    seed: Int | None = None
    top_k: Int | None = None
    min_p: Float | None = None
    repetition_penalty: Float | None = None
    selector: str | None = None
    recompute_ratio: Float | None = None
    chunks: list[str] | None = None
    cache_salt: str | None = None
    fidelity: Literal["off", "guarded"] | None = None

    def as_chat(self) -> ChatCompletionRequest:
        """The chat request that asks for the same answer (a 400 naming the field when one cannot be said
        in chat's terms)."""
        chat: dict[str, Any] = {"model": self.model, "messages": self._messages(), "stream": False}
        chat.update(temperature=self.temperature, top_p=self.top_p)
        if self.max_output_tokens is not None:
            chat["max_completion_tokens"] = self.max_output_tokens
        if self.tools:
            chat["tools"] = [_chat_tool(i, t) for i, t in enumerate(self.tools)]
        if self.tool_choice is not None:
            chat["tool_choice"] = _chat_tool_choice(self.tool_choice)
        if self.text is not None:
            fmt = _chat_format(self.text)
            if fmt is not None:
                chat["response_format"] = fmt
        extensions = ("seed", "top_k", "min_p", "repetition_penalty", "selector", "recompute_ratio", "chunks")
        for name in (*extensions, "cache_salt", "fidelity"):
            if getattr(self, name) is not None:
                chat[name] = getattr(self, name)
        try:
            return ChatCompletionRequest.model_validate(chat)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "input"
            raise APIError(
                400, f"{where}: {first['msg'].removeprefix('Value error, ')}", "invalid_value", where
            ) from None

    def _messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return [*messages, {"role": "user", "content": self.input}]
        names: dict[str, str] = {}  # call_id -> function name, for the outputs that answer a call
        for i, item in enumerate(self.input):
            kind = item.get("type", "message")
            if kind == "message":
                messages.append({"role": item.get("role"), "content": _item_text(i, item.get("content"))})
            elif kind == "function_call":
                call = {"id": item.get("call_id"), "type": "function",
                        "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}  # fmt: skip
                names[str(item.get("call_id"))] = str(item.get("name"))
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last["content"]:
                    last["tool_calls"].append(call)  # parallel calls: one assistant turn
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                call_id = str(item.get("call_id"))
                output = item.get("output")
                content = output if isinstance(output, str) else _item_text(i, output)
                messages.append(
                    {"role": "tool", "tool_call_id": call_id, "name": names.get(call_id), "content": content}
                )
            else:
                raise APIError(400, f"input[{i}]: items of type {kind!r} are not supported", "invalid_value", "input")
        return messages


def _item_text(i: int, content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise APIError(400, f"input[{i}]: only text content is supported, got {kind!r}", "invalid_value", "input")
        parts.append(part["text"])
    return "".join(parts)


def _chat_tool(i: int, tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise APIError(400, f"tools[{i}]: only function tools are supported, got {tool.get('type')!r}",
                       "invalid_value", "tools")  # fmt: skip
    function = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise APIError(400, "tool_choice: none, auto, required or {'type': 'function', 'name': ...}",
                       "invalid_value", "tool_choice")  # fmt: skip
    return {"type": "function", "function": {"name": choice["name"]}}


def _chat_format(text: dict[str, Any]) -> dict[str, Any] | None:
    unknown = sorted(set(text) - {"format", "verbosity"})
    if unknown or text.get("verbosity") not in (None, "medium"):
        name = unknown[0] if unknown else "verbosity"
        raise APIError(400, f"text.{name} is not supported", "invalid_value", "text")
    fmt = text.get("format")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    raise APIError(400, f"text.format: type {fmt.get('type')!r} is not supported", "invalid_value", "text")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def output_items(text: str, tools: list[dict] | None, message_id: str) -> list[dict[str, Any]]:
    """The answer as output items: its text as a message, its tool calls (when tools were offered) as
    function_call items."""
    if tools:
        parsed = parse_tool_calls(text, {t["name"] for t in tools if t.get("type") == "function"})
        if parsed.tool_calls:
            calls = [{"id": new_id("fc"), "type": "function_call", "status": "completed", "call_id": c["id"],
                      "name": c["name"], "arguments": json.dumps(c["args"])} for c in parsed.tool_calls]  # fmt: skip
            return [message_item(message_id, parsed.content), *calls] if parsed.content else calls
    return [message_item(message_id, text)]


class ResponseObject:
    """The `response` object of one request, as it is in progress and once it is answered."""

    def __init__(self, body: ResponsesRequest, model: str) -> None:
        self.body, self.model = body, model
        self.id, self.created_at = new_id("resp"), int(time.time())

    def in_progress(self) -> dict[str, Any]:
        return self._object("in_progress", [], None, None)

    def finished(self, items: list[dict[str, Any]], last: GenerationChunk) -> dict[str, Any]:
        status = "incomplete" if last.finish_reason == "length" else "completed"
        return self._object(status, items, last, last.stats)

    def _object(self, status: str, items: list, last: GenerationChunk | None, stats: GenerationStats | None) -> dict:
        b = self.body
        usage = last.usage if last is not None else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.model, "output": items, "instructions": b.instructions,
            "max_output_tokens": b.max_output_tokens, "temperature": b.temperature, "top_p": b.top_p,
            "tools": b.tools or [], "tool_choice": b.tool_choice or "auto", "parallel_tool_calls": True,
            "text": b.text or {"format": {"type": "text"}}, "store": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "usage": None if usage is None else {
                "input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
            "fusionrag": stats.to_dict() if stats is not None else None,
        }  # fmt: skip
