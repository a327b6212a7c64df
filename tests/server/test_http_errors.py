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
    "n_two": ("/v1/chat/completions", chat(n=2), AUTH, 400),
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
