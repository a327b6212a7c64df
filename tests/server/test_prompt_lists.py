"""/v1/completions with a list of prompts (as vLLM and OpenAI take it): choice i x n + j answers prompt i,
each answer equal to the one a request of that prompt alone gets, the usage counting every prompt once;
token-id prompts and lists out of bounds are refused naming `prompt`; a prompt the engine refuses fails
the request and leaves nothing running. Driven by the official `openai` client on a real server."""

from __future__ import annotations

import time

import httpx
import pytest
from openai import BadRequestError

from fusionrag_integrations.server.openai_format import summed_usage
from fusionrag_integrations.server.schemas import MAX_PROMPTS
from tests.server.conftest import API_KEY, MODEL

PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3,"]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_a_list_of_prompts_answers_each_as_alone_in_order(client):
    sampled = dict(max_tokens=5, n=2, temperature=0.9, seed=11)
    together = client.completions.create(model=MODEL, prompt=PROMPTS, **sampled)
    alone = [client.completions.create(model=MODEL, prompt=p, **sampled) for p in PROMPTS]
    assert [c.index for c in together.choices] == list(range(len(PROMPTS) * 2))
    assert [c.text for c in together.choices] == [c.text for a in alone for c in a.choices]
    assert together.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert together.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert together.usage.total_tokens == together.usage.prompt_tokens + together.usage.completion_tokens


def test_a_streamed_list_of_prompts_names_each_choice_and_sums_the_usage(client):
    greedy = dict(max_tokens=5, n=2, temperature=0)
    whole = client.completions.create(model=MODEL, prompt=PROMPTS[:2], **greedy)
    events = list(client.completions.create(model=MODEL, prompt=PROMPTS[:2], stream=True,
                                            stream_options={"include_usage": True}, **greedy))  # fmt: skip
    texts: dict[int, str] = {}
    for event in events:
        for choice in event.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {c.index: c.text for c in whole.choices}
    usage = events[-1].usage
    assert usage is not None and not events[-1].choices
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)


@pytest.mark.parametrize(
    "prompt", [[1, 2, 3], [[1, 2]], [], ["a"] * (MAX_PROMPTS + 1)], ids=["ids", "id-lists", "empty", "too-many"]
)
def test_token_ids_and_lists_out_of_bounds_are_refused_naming_prompt(client, prompt):
    with pytest.raises(BadRequestError) as err:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    assert err.value.body["param"] == "prompt" and "prompt" in err.value.body["message"]


def cancelled(server: str) -> float:
    page = httpx.get(f"{server}/metrics", headers=AUTH).text
    line = next((x for x in page.splitlines() if x.startswith('fusionrag_requests_total{outcome="cancelled"}')), "")
    return float(line.split()[-1]) if line else 0.0


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_too_long_fails_the_list_and_cancels_the_others(server, stream):
    before = cancelled(server)
    body = {"model": MODEL, "prompt": ["Say hi.", "word " * 20_000], "max_tokens": 64, "stream": stream}
    response = httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=120)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")
    deadline = time.monotonic() + 60  # generous: the first prompt's stream is closed from a worker thread
    while cancelled(server) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cancelled(server) == before + 1  # the first prompt's answer, opened and then given up


def test_a_refused_field_is_the_errors_param_and_its_value_is_not_a_template(server):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "suffix": "{param} {message}"}
    error = httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=60).json()["error"]
    assert error["param"] == "suffix" and "'{param} {message}'" in error["message"]
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "frobnicate": 1}
    error = httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=60).json()["error"]
    assert error["param"] == "frobnicate" and not error["message"].startswith("body")


def test_summed_usage_counts_each_prompt_once():
    def usage(prompt: int, completion: int, cached: int) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip

    usages = [usage(7, 3, 2), usage(7, 4, 2), usage(11, 5, 0), usage(11, 1, 0)]  # two prompts, n = 2
    assert summed_usage(usages, 2) == {"prompt_tokens": 18, "completion_tokens": 13, "total_tokens": 31,
                                       "prompt_tokens_details": {"cached_tokens": 2}}  # fmt: skip
    assert summed_usage(usages, 1)["prompt_tokens"] == 36
