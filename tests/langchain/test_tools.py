"""Tool calling plumbing: tools reach the model, calls are parsed, histories round-trip.

The bundled 135M model does not produce tool calls (it answers instead), so the model's
replies are scripted here; what is tested is everything around the model."""

from __future__ import annotations

import copy

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from fusionrag_integrations.fusion.prompt import render_chat
from fusionrag_integrations.integrations.tools import parse_tool_calls, template_supports_tools
from fusionrag_integrations.langchain import ChatFusionRAG
from fusionrag_integrations.langchain.chat_model import to_engine_messages
from fusionrag_integrations.outputs import GenerationChunk, GenerationStats, Usage


@tool
def magic_function(input: int) -> int:
    """Applies a magic function to an input."""
    return input + 2


@pytest.mark.parametrize(
    "text, content",
    [
        ('<tool_call>\n{"name": "magic_function", "arguments": {"input": 3}}\n</tool_call>', ""),
        (
            'Let me check.\n<tool_call>{"name": "magic_function", "arguments": {"input": 3}}</tool_call>',
            "Let me check.",
        ),
        ('{"name": "magic_function", "parameters": {"input": 3}}', ""),
        ('<|python_tag|>{"name": "magic_function", "parameters": {"input": 3}}', ""),
        ('```json\n{"name": "magic_function", "arguments": "{\\"input\\": 3}"}\n```', ""),
    ],
)
def test_parses_the_formats_models_emit(text, content):
    parsed = parse_tool_calls(text, {"magic_function"})
    assert parsed.content == content
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("magic_function", {"input": 3})]


def test_plain_text_and_unknown_tools_are_not_calls():
    assert parse_tool_calls("The answer is 5.").tool_calls == []
    assert parse_tool_calls('{"name": "other", "arguments": {}}', {"magic_function"}).tool_calls == []
    assert parse_tool_calls('{"name": "magic_function", "arguments": {').tool_calls == []


class Script:
    """The model's scripted reply, and what the engine was asked."""

    def __init__(self) -> None:
        self.reply = ""
        self.asked: list[tuple] = []


@pytest.fixture
def scripted(lc_engine, monkeypatch) -> Script:
    script = Script()

    def stream(prompt, **kwargs):
        script.asked.append((prompt, kwargs))
        yield GenerationChunk(script.reply, [1])
        yield GenerationChunk("", [], "stop", Usage(10, 1, 0), GenerationStats(ttft_ms=1.0))

    monkeypatch.setattr(lc_engine, "stream", stream)
    return script


def test_tools_reach_a_template_without_tool_support_as_an_instruction(lc_engine, scripted):
    assert not template_supports_tools(lc_engine.tokenizer)  # SmolLM2's template ignores tools
    scripted.reply = '{"name": "magic_function", "arguments": {"input": 3}}'
    llm = ChatFusionRAG(engine=lc_engine).bind_tools([magic_function], tool_choice="any")
    message = llm.invoke("What is magic_function(3)?")
    assert message.tool_calls[0]["name"] == "magic_function" and message.tool_calls[0]["args"] == {"input": 3}
    assert message.content == ""
    prompt, kwargs = scripted.asked[0]
    assert prompt[0]["role"] == "system" and "magic_function" in prompt[0]["content"]
    assert "must call" in prompt[0]["content"] and kwargs["tools"] is None


def test_streamed_tool_call_aggregates(lc_engine, scripted):
    scripted.reply = '<tool_call>{"name": "magic_function", "arguments": {"input": 4}}</tool_call>'
    llm = ChatFusionRAG(engine=lc_engine).bind_tools([magic_function])
    chunks = list(llm.stream("What is magic_function(4)?"))
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("magic_function", {"input": 4})]
    assert total.usage_metadata["input_tokens"] == 10


def test_plain_answers_still_work_with_tools_bound(lc_engine, scripted):
    scripted.reply = "The answer is 5."
    message = ChatFusionRAG(engine=lc_engine).bind_tools([magic_function]).invoke("hi")
    assert message.content == "The answer is 5." and message.tool_calls == []


def test_tool_history_round_trips_without_native_support():
    call = {"name": "magic_function", "args": {"input": 3}, "id": "call_1", "type": "tool_call"}
    history = [
        HumanMessage("What is magic_function(3)?"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("5", tool_call_id="call_1", name="magic_function"),
    ]
    plain = to_engine_messages(history, native_tools=False)
    assert plain[1] == {"role": "assistant", "content": '{"name": "magic_function", "arguments": {"input": 3}}'}
    assert plain[2] == {"role": "user", "content": "Tool result (magic_function): 5"}
    native = to_engine_messages(history, native_tools=True)
    assert native[1]["tool_calls"][0]["function"] == {"name": "magic_function", "arguments": {"input": 3}}
    assert native[2] == {"role": "tool", "content": "5", "tool_call_id": "call_1"}


def test_a_template_with_tool_support_receives_the_schemas(lc_engine):
    tok = copy.deepcopy(lc_engine.tokenizer)
    tok.chat_template = (
        "{% if tools %}TOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    )
    assert template_supports_tools(tok)
    from langchain_core.utils.function_calling import convert_to_openai_tool

    rendered = render_chat(tok, [{"role": "user", "content": "hi"}], [convert_to_openai_tool(magic_function)])
    assert rendered.startswith("TOOLS: magic_function") and rendered.endswith("user: hi\nassistant:")
