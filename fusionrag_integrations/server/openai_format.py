"""Between OpenAI's wire format and the engine: request -> (prompt, settings), pieces -> response
objects. The fusion statistics ride in an extra `fusionrag` field that OpenAI clients ignore, and the
reused prompt tokens in `usage.prompt_tokens_details.cached_tokens`."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ..integrations.logprobs import Decode, chat_logprobs, completion_logprobs
from ..integrations.messages import engine_message
from ..integrations.tools import parse_tool_calls, prompt_with_tools, template_supports_tools, tool_call_format
from ..outputs import GenerationChunk, GenerationStats, TokenLogprob, Usage
from .schemas import ChatCompletionRequest, CompletionRequest, _Generation
from .structured import requested_format


def engine_settings(body: _Generation, max_tokens: int | None) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop": body.stops(),
    }
    if max_tokens is not None:
        settings["max_new_tokens"] = max_tokens
    if body.top_k is not None and body.top_k > 0:
        settings["top_k"] = body.top_k
    for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "min_p"):
        settings[name] = getattr(body, name)
    if body.logit_bias:
        settings["logit_bias"] = body.logit_bias
    if body.logprob_count() is not None:
        settings["logprobs"] = body.logprob_count()
    if body.selector is not None:
        settings["selector"] = body.selector
    if body.recompute_ratio is not None:
        settings["recompute_ratio"] = body.recompute_ratio
    if body.chunks is not None:
        settings["chunks"] = body.chunks
    if body.fidelity is not None:
        settings["fidelity"] = body.fidelity
    return settings


def chat_prompt(body: ChatCompletionRequest, tokenizer) -> tuple[list[dict], dict[str, Any]]:
    """OpenAI messages -> chat-template messages (tool calls and results through the shared converter)."""
    native = template_supports_tools(tokenizer)
    messages = []
    for m in body.messages:
        role = "system" if m.role == "developer" else m.role
        calls = [
            {"id": c.get("id"), "name": c["function"]["name"], "args": _arguments(c["function"])}
            for c in m.tool_calls or []
        ]
        result = (m.tool_call_id, m.name or "tool") if m.role == "tool" else None
        messages.append(engine_message(role, m.text(), calls, result, native))
    choice = (
        body.tool_choice
        if isinstance(body.tool_choice, str) or body.tool_choice is None
        else (body.tool_choice["function"]["name"])
    )
    tools = body.tools if choice != "none" else None
    prompt, template_tools = prompt_with_tools(messages, tools, choice, native)
    settings = engine_settings(body, body.max_completion_tokens or body.max_tokens)
    settings["response_format"] = requested_format(body, tool_call_format(tools, choice, native))
    return prompt, {**settings, "tools": template_tools} if template_tools else settings


def _arguments(function: dict) -> dict:
    args = function.get("arguments", {})
    if isinstance(args, str):
        try:
            return json.loads(args or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"tool call arguments are not JSON: {err}") from None
    return args


def completion_prompts(body: CompletionRequest) -> tuple[list[str], dict[str, Any]]:
    settings = engine_settings(body, body.max_tokens if body.max_tokens is not None else 16)
    return body.texts(), {**settings, "response_format": requested_format(body)}


def usage_json(usage: Usage | None) -> dict[str, Any]:
    assert usage is not None  # a finished generation's last piece carries its usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def stats_json(stats: GenerationStats | None) -> dict[str, Any] | None:
    return stats.to_dict() if stats is not None else None


class ResponseIds:
    def __init__(self, kind: str, model: str) -> None:
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.kind, self.model, self.created = kind, model, int(time.time())

    def envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def chat_response(
    ids: ResponseIds,
    text: str,
    last: GenerationChunk,
    tools: list[dict] | None,
    logprobs: list[TokenLogprob] | None = None,
    decode: Decode | None = None,
) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    finish: str | None = last.finish_reason
    if tools:
        parsed = parse_tool_calls(text, {t.get("function", {}).get("name") for t in tools})
        if parsed.tool_calls:
            message["content"] = parsed.content or None
            message["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["args"])}}
                for c in parsed.tool_calls
            ]
            finish = "tool_calls"
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": finish,
        "logprobs": chat_logprobs(logprobs, decode) if logprobs is not None and decode else None,
    }
    return {
        **ids.envelope("chat.completion"),
        "choices": [choice],
        "usage": usage_json(last.usage),
        "fusionrag": stats_json(last.stats),
    }


def completion_response(
    ids: ResponseIds, text: str, last: GenerationChunk, logprobs: list[TokenLogprob] | None, decode: Decode
) -> dict:
    choice = {
        "index": 0,
        "text": text,
        "finish_reason": last.finish_reason,
        "logprobs": completion_logprobs(logprobs, decode) if logprobs is not None else None,
    }
    return {
        **ids.envelope("text_completion"),
        "choices": [choice],
        "usage": usage_json(last.usage),
        "fusionrag": stats_json(last.stats),
    }


def merge_choices(responses: list[dict], per_prompt: int) -> dict:
    """Responses of one choice each as one response (choices indexed in order): every `per_prompt`
    consecutive ones answer one prompt, whose tokens are counted once, as OpenAI counts n > 1; the
    completions and the prompts are summed. The fusion statistics are the first choice's."""
    merged = dict(responses[0])
    merged["choices"] = [{**r["choices"][0], "index": i} for i, r in enumerate(responses)]
    merged["usage"] = summed_usage([r["usage"] for r in responses], per_prompt)
    return merged


def summed_usage(usages: list[dict[str, Any]], per_prompt: int) -> dict[str, Any]:
    """One usage for the choices of several prompts (`per_prompt` consecutive choices share one)."""
    firsts = usages[::per_prompt]
    prompt = sum(u["prompt_tokens"] for u in firsts)
    completion = sum(u["completion_tokens"] for u in usages)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in firsts)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def stream_chunk(
    ids: ResponseIds, piece: GenerationChunk | None, first: bool = False, decode: Decode | None = None, offset: int = 0
) -> dict:
    """One SSE event's object; piece None = the final usage-only chunk (choices empty, as OpenAI sends).
    decode: set when logprobs were asked for (then each chunk carries its tokens'); offset: the text
    streamed before this piece (completions' text_offset). The finishing chunk carries the fusion
    statistics, with or without include_usage."""
    if piece is None:
        return {**ids.envelope("chat.completion.chunk" if ids.kind == "chat" else "text_completion"), "choices": []}
    stats = {"fusionrag": stats_json(piece.stats)} if piece.finish_reason and piece.stats else {}
    if ids.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": piece.text} if first else {"content": piece.text}
        choice = {
            "index": 0,
            "delta": delta if piece.text or first else {},
            "finish_reason": piece.finish_reason,
            "logprobs": chat_logprobs(piece.logprobs, decode) if decode else None,
        }
        return {**ids.envelope("chat.completion.chunk"), "choices": [choice], **stats}
    logprobs = completion_logprobs(piece.logprobs, decode, offset) if decode else None
    choice = {"index": 0, "text": piece.text, "finish_reason": piece.finish_reason, "logprobs": logprobs}
    return {**ids.envelope("text_completion"), "choices": [choice], **stats}
