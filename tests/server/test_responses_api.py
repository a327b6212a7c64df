"""POST /v1/responses driven by the official `openai` client and LangChain's ChatOpenAI with
use_responses_api: the answer is the chat endpoint's for the same messages, streamed as the API's typed
events in order, cut by max_output_tokens as "incomplete", parsed into a pydantic model, calling tools (and
taking their results back); what the server does not do is refused naming the field."""

from __future__ import annotations

import time

import httpx
import pytest
from pydantic import BaseModel

from tests.server.conftest import API_KEY, MODEL

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city", "parameters": CITY}


AUTH = {"Authorization": f"Bearer {API_KEY}"}


class Person(BaseModel):
    name: str
    age: int


def test_the_answer_is_the_chat_endpoints_for_the_same_messages(client):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    parts = [{"type": "input_text", "text": "Name a colour."}]
    response = client.responses.create(model=MODEL, instructions="Answer briefly.", max_output_tokens=10,
                                       input=[{"role": "user", "content": parts}], temperature=0)  # fmt: skip
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")


def test_streamed_events_come_in_order_and_add_up_to_the_answer(client):
    whole = client.responses.create(model=MODEL, input="Count to five.", max_output_tokens=12, temperature=0)
    events = list(client.responses.create(model=MODEL, input="Count to five.", max_output_tokens=12, temperature=0,
                                          stream=True))  # fmt: skip
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    opening = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    closing = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[:4] == opening and kinds[-4:-1] == closing
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas == final.output_text == whole.output_text and kinds[-1] == f"response.{final.status}"
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_max_output_tokens_makes_an_incomplete_response(client):
    response = client.responses.create(model=MODEL, input="Write a long story about a dragon.", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_parse_follows_the_schema(client):
    parsed = client.responses.parse(model=MODEL, input="Describe a person.", text_format=Person, max_output_tokens=80)
    assert isinstance(parsed.output_parsed, Person)


@pytest.mark.parametrize("stream", [False, True])
def test_a_required_tool_call_is_a_function_call_item(client, stream):
    asked = dict(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
                 max_output_tokens=60)  # fmt: skip
    if stream:
        events = list(client.responses.create(**asked, stream=True))
        kinds = [e.type for e in events]
        assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
        output = events[-1].response.output
    else:
        output = client.responses.create(**asked).output
    calls = [item for item in output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and '"city"' in calls[0].arguments


def test_a_tool_result_goes_back_in(client):
    items = [{"role": "user", "content": "What is the weather in Paris?"},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"}]  # fmt: skip
    response = client.responses.create(model=MODEL, input=items, tools=[WEATHER], max_output_tokens=8, temperature=0)
    assert response.status in ("completed", "incomplete") and response.usage.input_tokens > 20


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]}, "input"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
        ({"text": {"format": {"type": "text"}, "verbosity": "low"}}, "text"),
        ({"max_output_tokns": 5}, "max_output_tokns"),
        ({"input": "word " * 20_000}, "input"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_what_is_not_done_is_refused_naming_the_field(server, extra, param):
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 4, **extra}
    response = httpx.post(f"{server}/v1/responses", json=body, headers=AUTH, timeout=120)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_langchain_chat_openai_over_the_responses_api(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server}/v1", api_key=API_KEY, model=MODEL, use_responses_api=True,
                     temperature=0, max_tokens=24)  # fmt: skip
    answer = llm.invoke("Say hello.")
    assert answer.text and answer.usage_metadata["output_tokens"] >= 1
    assert "".join(chunk.text for chunk in llm.stream("Say hello.")) == answer.text
    assert isinstance(llm.with_structured_output(Person, method="json_schema").invoke("A person."), Person)

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    call = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert call.tool_calls and call.tool_calls[0]["name"] == "get_weather" and "city" in call.tool_calls[0]["args"]


def test_a_client_that_leaves_a_stream_cancels_its_response(server):
    def cancelled() -> float:
        page = httpx.get(f"{server}/metrics", headers=AUTH).text
        line = next((x for x in page.splitlines() if x.startswith('fusionrag_requests_total{outcome="cancelled"}')), "")
        return float(line.split()[-1]) if line else 0.0

    before = cancelled()
    # greedy, this prompt runs to max_output_tokens (300 of 300 checked), so only the cancel can end it early
    body = {"model": MODEL, "input": "Tell a very long story.", "max_output_tokens": 4000, "temperature": 0,
            "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{server}/v1/responses", json=body, headers=AUTH, timeout=120) as response:
        for line in response.iter_lines():
            if "response.output_text.delta" in line:
                break  # one delta read, then the connection closes
    deadline = time.monotonic() + 60  # generous: the step loop drops it at its next step
    while cancelled() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cancelled() == before + 1
