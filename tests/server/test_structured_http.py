"""Structured output, logprobs, min_p and logit_bias through the official `openai` client against a real
`fusionrag serve`: parsed pydantic answers, JSON mode, vLLM's guided fields, a required tool call,
logprobs in both layouts (streamed and not), and the fusion statistics on every stream's last chunk."""

from __future__ import annotations

import json
import math
from typing import Annotated

import httpx
import pytest
from pydantic import BaseModel, Field

from tests.server.conftest import API_KEY, MODEL

ASK = [{"role": "user", "content": "Describe a person called Alice, aged 30, who likes chess."}]


class Person(BaseModel):  # bounded: a 135M model can repeat itself inside an unbounded string or list
    name: str = Field(max_length=20)
    age: int
    hobbies: list[Annotated[str, Field(max_length=20)]] = Field(max_length=3)


def test_parse_returns_the_pydantic_model(client):
    out = client.chat.completions.parse(model=MODEL, messages=ASK, response_format=Person, max_tokens=80)
    person = out.choices[0].message.parsed
    assert isinstance(person, Person) and out.choices[0].finish_reason == "stop"
    sampled = client.chat.completions.parse(model=MODEL, messages=ASK, response_format=Person, max_tokens=80,
                                            temperature=1.2, seed=5)  # fmt: skip
    assert isinstance(sampled.choices[0].message.parsed, Person)


def test_json_mode_and_guided_fields(client):
    obj = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60, temperature=0.8, seed=2,
                                         response_format={"type": "json_object"})  # fmt: skip
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    choices = ["red", "green", "blue"]
    picked = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A colour?"}],
                                            max_tokens=5, extra_body={"guided_choice": choices})  # fmt: skip
    assert picked.choices[0].message.content in choices
    code = client.completions.create(model=MODEL, prompt="Postcode:", max_tokens=10,
                                     extra_body={"guided_regex": "[0-9]{5}"})  # fmt: skip
    assert len(code.choices[0].text) == 5 and code.choices[0].text.isdigit()


def test_a_required_tool_call_is_always_made(client):
    city = {"type": "string", "maxLength": 24}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": city}, "required": ["city"]}}}]  # fmt: skip
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi there"}],
                                             tools=tools, tool_choice=choice, max_tokens=80)  # fmt: skip
        assert out.choices[0].message.tool_calls, out.choices[0]
        call = out.choices[0].message.tool_calls[0]
        assert out.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_chat_logprobs_streamed_and_not(client):
    ask = dict(model=MODEL, messages=ASK, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    out = client.chat.completions.create(**ask)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:  # greedy: the chosen token is the likeliest of its top 3
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        assert entry.logprob <= 0 and bytes(entry.bytes).decode() == entry.token
    assert "".join(e.token for e in content) == out.choices[0].message.content
    streamed = [e for chunk in client.chat.completions.create(**ask, stream=True) for choice in chunk.choices
                if choice.logprobs for e in choice.logprobs.content]  # fmt: skip
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_layout(client):
    out = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, logprobs=2,
                                    temperature=0)  # fmt: skip
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    for top, chosen in zip(lp.top_logprobs, lp.token_logprobs):  # greedy: the chosen is the likeliest
        assert len(top) <= 2 and max(top.values()) == pytest.approx(chosen, abs=1e-5)
        assert sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-6


def test_logit_bias_min_p_and_stats_on_the_last_streamed_chunk(client, server):
    ids = httpx.post(f"{server}/tokenize", json={"model": MODEL, "prompt": " banana"},
                     headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).json()["tokens"]  # fmt: skip
    forced = client.completions.create(model=MODEL, prompt="Fruit:", max_tokens=3, temperature=0,
                                       logit_bias={str(ids[0]): 100})  # fmt: skip
    assert forced.choices[0].text.startswith(" banana")
    sampled = client.completions.create(model=MODEL, prompt="Fruit:", max_tokens=6, temperature=1.0, seed=1,
                                        extra_body={"min_p": 1.0})  # fmt: skip
    greedy = client.completions.create(model=MODEL, prompt="Fruit:", max_tokens=6, temperature=0)
    assert sampled.choices[0].text == greedy.choices[0].text  # min_p = 1 keeps only the likeliest token
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, stream=True))
    last = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert last.model_extra["fusionrag"]["ttft_ms"] > 0


def test_tool_calls_stream_as_openai_deltas(client):
    city = {"type": "string", "maxLength": 24}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": city}, "required": ["city"]}}}]  # fmt: skip
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=tools, max_tokens=80)
    events = list(client.chat.completions.create(**ask, tool_choice="required", stream=True))
    deltas = [c.choices[0].delta for c in events if c.choices]
    heads = [d.tool_calls[0] for d in deltas if d.tool_calls and d.tool_calls[0].id]
    assert len(heads) == 1 and heads[0].function.name == "get_weather" and deltas[0].role == "assistant"
    arguments = "".join(d.tool_calls[0].function.arguments or "" for d in deltas if d.tool_calls)
    assert len([d for d in deltas if d.tool_calls]) > 2  # the arguments came in pieces, as generated
    assert set(json.loads(arguments)) == {"city"}  # the streamed pieces join into the call's JSON arguments
    assert [c.choices[0].finish_reason for c in events if c.choices][-1] == "tool_calls"
    assert not any(d.content for d in deltas)
    prose = list(client.chat.completions.create(**ask, tool_choice="auto", stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in prose if c.choices)
    calls = [c for c in prose if c.choices and c.choices[0].delta.tool_calls]
    assert text or calls  # free to answer either way; whichever it is arrives in its own field


def test_n_choices_stream_interleaved_with_their_index(client):
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Name an animal."}], max_tokens=8,
               temperature=1.2, seed=11, extra_body={"chunks": []})  # fmt: skip
    whole = client.chat.completions.create(**ask, n=3)
    events = list(client.chat.completions.create(**ask, n=3, stream=True, stream_options={"include_usage": True}))
    texts = {i: "".join(c.choices[0].delta.content or "" for c in events if c.choices and c.choices[0].index == i)
             for i in range(3)}  # fmt: skip
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole.choices]
    finishes = [c.choices[0].index for c in events if c.choices and c.choices[0].finish_reason]
    assert sorted(finishes) == [0, 1, 2]
    assert events[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert events[-1].usage.prompt_tokens == whole.usage.prompt_tokens
