"""Bad input gets OpenAI-style error JSON and the right status, one test per kind, and the server
keeps serving after each."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import API_KEY, MODEL

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "Hello"}]


def chat(**body) -> dict:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 2, **body}


CASES = {
    "malformed_json": ("/v1/chat/completions", b'{"model": "smol", "messages": [', AUTH, 400),
    "missing_messages": ("/v1/chat/completions", {"model": MODEL}, AUTH, 400),
    "empty_messages": ("/v1/chat/completions", chat(messages=[]), AUTH, 400),
    "unknown_model": ("/v1/chat/completions", chat(model="gpt-9"), AUTH, 404),
    "temperature_out_of_range": ("/v1/chat/completions", chat(temperature=3), AUTH, 400),
    "top_p_zero": ("/v1/chat/completions", chat(top_p=0), AUTH, 400),
    "max_tokens_zero": ("/v1/chat/completions", chat(max_tokens=0), AUTH, 400),
    "n_over_16": ("/v1/chat/completions", chat(n=17), AUTH, 400),
    "frequency_penalty_out_of_range": ("/v1/chat/completions", chat(frequency_penalty=2.5), AUTH, 400),
    "repetition_penalty_zero": ("/v1/chat/completions", chat(repetition_penalty=0), AUTH, 400),
    "schema_without_schema": ("/v1/chat/completions", chat(response_format={"type": "json_schema"}), AUTH, 400),
    "regex_that_does_not_compile": ("/v1/chat/completions", chat(guided_regex="[0-9"), AUTH, 400),
    "two_answer_formats": ("/v1/chat/completions", chat(guided_choice=["a"], guided_regex="a"), AUTH, 400),
    "top_logprobs_without_logprobs": ("/v1/chat/completions", chat(top_logprobs=2), AUTH, 400),
    "logit_bias_outside_vocabulary": ("/v1/chat/completions", chat(logit_bias={"99999999": 5}), AUTH, 400),
    "bad_role": ("/v1/chat/completions", chat(messages=[{"role": "wizard", "content": "x"}]), AUTH, 400),
    "image_part": (
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        AUTH,
        400,
    ),  # fmt: skip
    "unknown_selector": ("/v1/chat/completions", chat(selector="magic"), AUTH, 400),
    "prompt_over_context_window": (
        "/v1/completions",
        {"model": MODEL, "prompt": "word " * 9000, "max_tokens": 2},
        AUTH,
        400,
    ),  # fmt: skip
    "tool_choice_unknown_tool": (
        "/v1/chat/completions",
        chat(tool_choice={"type": "function", "function": {"name": "nope"}}),
        AUTH,
        400,
    ),  # fmt: skip
    "wrong_api_key": ("/v1/chat/completions", chat(), {"Authorization": "Bearer wrong"}, 401),
    "no_api_key": ("/v1/models", None, {}, 401),
    "oversized_body": (
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": "x" * (2 << 20)}]),
        AUTH,
        413,
    ),  # fmt: skip
    "empty_chunk_list": ("/v1/chunks", {"texts": []}, AUTH, 400),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_is_an_openai_error(server, kind):
    path, body, headers, status = CASES[kind]
    if body is None:
        response = httpx.get(f"{server}{path}", headers=headers, timeout=60)
    elif isinstance(body, bytes):
        response = httpx.post(f"{server}{path}", content=body, headers={**headers, "Content-Type": "application/json"},
                              timeout=60)  # fmt: skip
    else:
        response = httpx.post(f"{server}{path}", json=body, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if kind == "prompt_over_context_window":
        assert error["code"] == "context_length_exceeded"
    ok = httpx.post(f"{server}/v1/chat/completions", json=chat(), headers=AUTH, timeout=120)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None


REFUSED = {
    "max_tokns": 5,  # a typo: not an OpenAI field
    "ignore_eos": True,  # another server's extension
    "store": True,
    "audio": {"voice": "alloy", "format": "mp3"},
    "prediction": {"type": "content", "content": "x"},
    "parallel_tool_calls": False,
    "service_tier": "priority",
    "reasoning_effort": "high",
    "functions": [{"name": "f", "parameters": {}}],
}


@pytest.mark.parametrize("field", list(REFUSED))
def test_a_field_not_honoured_is_refused_by_name(server, field):
    response = httpx.post(f"{server}/v1/chat/completions", json=chat(**{field: REFUSED[field]}), headers=AUTH,
                          timeout=60)  # fmt: skip
    assert response.status_code == 400 and field in response.json()["error"]["message"], response.text


def test_fields_that_ask_for_nothing_are_accepted_and_top_k_is_honoured(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    neutral = {"top_logprobs": 0, "logit_bias": {}, "logprobs": False, "user": "u-1",
               "response_format": {"type": "text"}, "metadata": {"team": "a"}, "service_tier": "auto",
               "parallel_tool_calls": True}  # fmt: skip
    prompt = [{"role": "user", "content": "Name three colours."}]
    greedy = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=8, temperature=0, **neutral)
    top1 = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=8, temperature=1.5, seed=3,
                                          extra_body={"top_k": 1})  # fmt: skip
    assert top1.choices[0].message.content == greedy.choices[0].message.content  # only the likeliest token is left


def test_penalties_reach_the_sampler(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    ask = dict(model=MODEL, prompt="Repeat after me: la la la la la la la la la la", max_tokens=12, temperature=0)
    plain = client.completions.create(**ask).choices[0].text
    penalised = [client.completions.create(**ask, frequency_penalty=1.5, extra_body={"repetition_penalty": 1.3})
                 for _ in range(2)]  # fmt: skip
    assert penalised[0].choices[0].text == penalised[1].choices[0].text != plain


def test_n_choices_are_sampled_independently_and_counted_once_for_the_prompt(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Name an animal."}], max_tokens=8)
    one = client.chat.completions.create(**ask, temperature=1.2, seed=11)
    three = client.chat.completions.create(**ask, temperature=1.2, seed=11, n=3)
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2] and texts[0] == one.choices[0].message.content
    assert len(set(texts)) > 1  # seeds 11, 12, 13: different samples
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    alone = [client.chat.completions.create(**ask, temperature=1.2, seed=11 + i) for i in range(3)]
    assert texts == [a.choices[0].message.content for a in alone]  # choice i is the request with seed + i
    assert three.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    again = client.chat.completions.create(**ask, temperature=1.2, seed=11, n=3)
    assert [c.message.content for c in again.choices] == texts  # reproducible as a whole
    completions = client.completions.create(model=MODEL, prompt="Colours: red,", max_tokens=4, temperature=0, n=2)
    assert len(completions.choices) == 2 and completions.choices[0].text == completions.choices[1].text
