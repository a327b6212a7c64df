"""Every request field the installed `openai` package defines for chat, completions and responses is either
answered or refused with a 400 that names it: one request per field, with a value that asks for
something, its kind read from the server's own schemas (honoured, accepted as metadata, or taken only
at the value that asks for nothing). What each honoured field does is tested with its feature.
docs/openai_fields.md is the same table for readers; a test checks that it names every field."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai.types import completion_create_params as completion_params
from openai.types.chat import completion_create_params as chat_params
from openai.types.responses import response_create_params as responses_params

from fusionrag_integrations.server.responses_format import RESPONSES_NEUTRAL, ResponsesRequest
from fusionrag_integrations.server.schemas import METADATA, NEUTRAL, ChatCompletionRequest, CompletionRequest
from tests.server.conftest import API_KEY, MODEL

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ENDPOINTS = {
    "chat": ("/v1/chat/completions", chat_params.CompletionCreateParamsBase, ChatCompletionRequest),
    "completions": ("/v1/completions", completion_params.CompletionCreateParamsBase, CompletionRequest),
    "responses": ("/v1/responses", responses_params.ResponseCreateParamsBase, ResponsesRequest),
}
NEUTRALS = {"chat": NEUTRAL, "completions": NEUTRAL, "responses": RESPONSES_NEUTRAL}
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
# a value that asks for something, per field: an honoured field must answer it, any other must refuse it
ASKING: dict[str, object] = {
    "frequency_penalty": 0.5,
    "presence_penalty": 0.5,
    "logit_bias": {"11": 2.0},
    "max_tokens": 3,
    "max_completion_tokens": 3,
    "n": 2,
    "seed": 7,
    "stop": ["\n\n"],
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.7,
    "top_p": 0.9,
    "response_format": {"type": "json_object"},
    "tools": [TOOL],
    "tool_choice": "auto",
    "user": "u-1",
    "metadata": {"team": "a"},
    "safety_identifier": "s-1",
    "prompt_cache_key": "k-1",
    "audio": {"voice": "alloy", "format": "mp3"},
    "function_call": "auto",
    "functions": [TOOL["function"]],
    "modalities": ["text", "audio"],
    "moderation": {"model": "omni-moderation-latest"},
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "x"},
    "prompt_cache_options": {"mode": "explicit"},
    "prompt_cache_retention": "24h",
    "reasoning_effort": "high",
    "service_tier": "priority",
    "store": True,
    "verbosity": "low",
    "web_search_options": {},
    "best_of": 2,
    "echo": True,
    "suffix": "end",
    "logprobs": True,
    "top_logprobs": 2,
}
ASKING_COMPLETIONS = {"logprobs": 2}  # the completions endpoint counts alternatives here
ASKING_RESPONSES = {  # the Responses API's own fields, and its spelling of tools and formats
    "background": True,
    "context_management": [{"type": "compaction"}],
    "conversation": "conv_1",
    "include": ["message.output_text.logprobs"],
    "instructions": "Be brief.",
    "max_output_tokens": 3,
    "max_tool_calls": 2,
    "previous_response_id": "resp_1",
    "prompt": {"id": "pmpt_1"},
    "reasoning": {"effort": "low"},
    "stream_options": {"include_obfuscation": True},
    "text": {"format": {"type": "json_object"}},
    "tools": [{"type": "function", **TOOL["function"]}],
    "truncation": "auto",
}
REQUIRED = {"model", "messages", "prompt", "input"}


def openai_fields(endpoint: str) -> list[str]:
    _, params, _ = ENDPOINTS[endpoint]
    required = REQUIRED - {"prompt"} if endpoint == "responses" else REQUIRED  # there a stored prompt template
    return sorted((set(params.__annotations__) | {"stream"}) - required)


def classify(endpoint: str, field: str) -> str:
    _, _, schema = ENDPOINTS[endpoint]
    if field in schema.model_fields:
        return "honoured"
    if field in METADATA:
        return "accepted"
    return "neutral only" if field in NEUTRALS[endpoint] else "refused"


def body(endpoint: str, **fields) -> dict:
    if endpoint == "chat":
        return {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3, **fields}
    if endpoint == "responses":
        return {"model": MODEL, "input": "Say hi.", "max_output_tokens": 3, **fields}
    return {"model": MODEL, "prompt": "Say hi.", "max_tokens": 3, **fields}


CASES = [(e, f) for e in ENDPOINTS for f in openai_fields(e)]


@pytest.mark.parametrize(("endpoint", "field"), CASES, ids=[f"{e}-{f}" for e, f in CASES])
def test_every_openai_field_works_or_is_refused_by_name(server, endpoint, field):
    asking = {**ASKING, **ASKING_COMPLETIONS} if endpoint == "completions" else ASKING
    asking = {**ASKING, **ASKING_RESPONSES} if endpoint == "responses" else asking
    assert field in asking, f"{field}: a field this test has no value for (a new one in the openai package?)"
    kind = classify(endpoint, field)
    extra = {"logprobs": True} if field == "top_logprobs" and endpoint == "chat" else {}
    value = asking[field]
    path = ENDPOINTS[endpoint][0]
    response = httpx.post(f"{server}{path}", json=body(endpoint, **{field: value}, **extra), headers=AUTH, timeout=120)
    if kind in ("honoured", "accepted"):
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400 and field in response.json()["error"]["message"], response.text
    if kind == "neutral only":  # not sent, or sent at the value that asks for nothing: answered
        values = NEUTRALS[endpoint][field]
        neutral = next(v for v in values if v is not None) if len(values) > 1 else None
        ok = httpx.post(f"{server}{path}", json=body(endpoint, **{field: neutral}), headers=AUTH, timeout=120)
        assert ok.status_code == 200, ok.text


def test_the_docs_table_names_every_field_as_the_server_classifies_it():
    table = (Path(__file__).resolve().parents[2] / "docs" / "openai_fields.md").read_text()
    rows = {}
    for line in table.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in ENDPOINTS:
            rows[(cells[0], cells[1])] = cells[2]
    for endpoint, field in CASES:
        assert rows.get((endpoint, field)) == classify(endpoint, field), (endpoint, field)
