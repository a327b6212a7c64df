"""The request fields that shape an answer, from OpenAI's and vLLM's names to the engine's: the response
format (OpenAI's `response_format`, vLLM's `guided_*`, a required tool call) and the logprobs objects
in OpenAI's two layouts (chat: `logprobs.content`, completions: parallel lists)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..outputs import TokenLogprob
from ..response_format import ResponseFormat
from .errors import APIError
from .schemas import _Generation

GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


def requested_format(body: _Generation, tool_format: ResponseFormat | None = None) -> ResponseFormat | None:
    """The one format a request asks for; two at once is a 400 naming them."""
    asked: dict[str, ResponseFormat | None] = {}
    if body.response_format is not None:
        asked["response_format"] = ResponseFormat.from_openai(body.response_format)
    if body.guided_json is not None:
        asked["guided_json"] = ResponseFormat.json_schema(body.guided_json)
    if body.guided_regex is not None:
        asked["guided_regex"] = ResponseFormat.regex(body.guided_regex)
    if body.guided_choice is not None:
        asked["guided_choice"] = ResponseFormat.choice(body.guided_choice)
    if body.guided_grammar is not None:
        asked["guided_grammar"] = ResponseFormat.grammar(body.guided_grammar)
    if tool_format is not None:
        asked["tool_choice"] = tool_format
    given = {name: fmt for name, fmt in asked.items() if fmt is not None}
    if len(given) > 1:
        names = ", ".join(given)
        raise APIError(400, f"{names}: one answer format per request", "invalid_value", next(iter(given)))
    return next(iter(given.values()), None)


Decode = Callable[[int], str]


def _entry(token: int, logprob: float, decode: Decode) -> dict[str, Any]:
    text = decode(token)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(logprobs: list[TokenLogprob], decode: Decode) -> dict[str, Any]:
    """OpenAI's chat layout: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""
    return {"content": [{**_entry(lp.token_id, lp.logprob, decode),
                         "top_logprobs": [_entry(t, v, decode) for t, v in lp.top]} for lp in logprobs]}  # fmt: skip


def completion_logprobs(logprobs: list[TokenLogprob], decode: Decode, offset: int = 0) -> dict[str, Any]:
    """OpenAI's completions layout: tokens, token_logprobs, top_logprobs (token -> logprob), text_offset."""
    tokens = [decode(lp.token_id) for lp in logprobs]
    offsets, at = [], offset
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{decode(t): v for t, v in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }
