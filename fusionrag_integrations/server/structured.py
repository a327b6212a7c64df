"""The request fields that shape an answer, from OpenAI's and vLLM's names to the engine's: the response
format (OpenAI's `response_format`, vLLM's `guided_*`, a required tool call)."""

from __future__ import annotations

from ..response_format import ResponseFormat
from .errors import APIError
from .schemas import _Generation


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
