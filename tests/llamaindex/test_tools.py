"""FusionRAGLLM as a FunctionCallingLLM: tools to the model, calls parsed, a real agent loop (scripted replies).

The bundled 135M model does not call tools, so the model's replies are scripted; the agent,
the tools and everything between them are LlamaIndex's own."""

from __future__ import annotations

import pytest
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.tools import FunctionTool

from fusionrag_integrations.llamaindex import FusionRAGLLM
from fusionrag_integrations.llamaindex.llm import to_engine_messages
from fusionrag_integrations.outputs import GenerationChunk, GenerationStats, Usage


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Script:
    def __init__(self, replies: list[str]) -> None:
        self.replies, self.asked = list(replies), []


@pytest.fixture
def script(li_engine, monkeypatch) -> Script:
    s = Script([])

    def stream(prompt, **kwargs):
        s.asked.append((prompt, kwargs))
        yield GenerationChunk(s.replies.pop(0), [1])
        yield GenerationChunk("", [], "stop", Usage(12, 3, 0), GenerationStats(ttft_ms=1.0))

    monkeypatch.setattr(li_engine, "stream", stream)
    return s


def test_chat_with_tools_parses_the_call(li_engine, script):
    script.replies = ['<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>']
    llm = FusionRAGLLM(engine=li_engine)
    assert llm.metadata.is_function_calling_model
    response = llm.chat_with_tools([FunctionTool.from_defaults(fn=add)], user_msg="What is 2 + 3?")
    [call] = llm.get_tool_calls_from_response(response)
    assert (call.tool_name, call.tool_kwargs) == ("add", {"a": 2, "b": 3}) and call.tool_id
    prompt, kwargs = script.asked[0]
    assert prompt[0]["role"] == "system" and '"name": "add"' in prompt[0]["content"]  # SmolLM2: no native tools
    assert kwargs["tools"] is None


def test_no_tool_call_is_an_error_only_when_asked(li_engine, script):
    script.replies = ["Five.", "Five."]
    llm = FusionRAGLLM(engine=li_engine)
    response = llm.chat_with_tools([FunctionTool.from_defaults(fn=add)], user_msg="What is 2 + 3?")
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="expected a tool call"):
        llm.get_tool_calls_from_response(response)
    llm.chat_with_tools([FunctionTool.from_defaults(fn=add)], user_msg="2 + 3?", tool_required=True)
    assert "must call" in script.asked[1][0][0]["content"]


def test_tool_history_becomes_text_for_templates_without_tools():
    history = [
        ChatMessage(role=MessageRole.USER, content="2 + 3?"),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            content="",
            additional_kwargs={"tool_calls": [{"id": "c1", "name": "add", "args": {"a": 2, "b": 3}}]},
        ),
        ChatMessage(role=MessageRole.TOOL, content="5", additional_kwargs={"tool_call_id": "c1", "name": "add"}),
    ]
    plain = to_engine_messages(history, native_tools=False)
    assert plain[1]["content"] == '{"name": "add", "arguments": {"a": 2, "b": 3}}'
    assert plain[2] == {"role": "user", "content": "Tool result (add): 5"}
    assert to_engine_messages(history, native_tools=True)[2]["tool_call_id"] == "c1"


async def test_function_agent_runs_the_tool_and_answers(li_engine, script):
    from llama_index.core.agent.workflow import FunctionAgent

    script.replies = ['{"name": "add", "arguments": {"a": 20, "b": 22}}', "The sum is 42."]
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(fn=add)], llm=FusionRAGLLM(engine=li_engine))
    result = await agent.run(user_msg="What is 20 + 22?")
    assert "42" in str(result)
    second_prompt = script.asked[1][0]
    assert any(m["content"] == "Tool result (add): 42" for m in second_prompt)  # the tool really ran
