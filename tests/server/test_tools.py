"""Tool calling over the server: tools reach the prompt, a tool-call history is accepted, and a
generated call comes back in OpenAI's shape (the bundled 135M model does not emit calls, so the
generated text is scripted for the last part; the parsing is the adapters' shared code)."""

from __future__ import annotations

import json

from openai.types.chat import ChatCompletion

from fusionrag_integrations.outputs import GenerationChunk, GenerationStats, Usage
from fusionrag_integrations.server.openai_format import ResponseIds, chat_response
from tests.server.conftest import MODEL

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                            "parameters": CITY}}  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


def test_tools_reach_the_prompt_and_a_tool_history_is_answered(client):
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, temperature=0)
    with_tools = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=4,
                                                temperature=0)  # fmt: skip
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 10  # the tool schema is in the prompt
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"}]  # fmt: skip
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=8,
                                            temperature=0)  # fmt: skip
    assert answer.choices[0].message.role == "assistant" and answer.usage.prompt_tokens > with_tools.usage.prompt_tokens


def test_a_generated_call_is_an_openai_tool_call():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    last = GenerationChunk("", [1], "stop", Usage(30, 12, 0), GenerationStats())
    response = ChatCompletion.model_validate(chat_response(ResponseIds("chat", MODEL), text, last, [WEATHER]))
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (called,) = choice.message.tool_calls
    assert called.function.name == "get_weather" and json.loads(called.function.arguments) == {"city": "Oslo"}
    plain = ChatCompletion.model_validate(chat_response(ResponseIds("chat", MODEL), "Sunny.", last, [WEATHER]))
    assert plain.choices[0].message.content == "Sunny." and not plain.choices[0].message.tool_calls
