"""with_structured_output (all three methods), a required tool call and logprobs, with the real SmolLM2: the
grammar makes the 135M model's answers parse as asked."""

from __future__ import annotations

import json

import pytest
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from fusionrag_integrations.errors import InvalidArgumentError
from fusionrag_integrations.langchain import ChatFusionRAG


class City(BaseModel):
    """A city and its country."""

    name: str = Field(max_length=30)
    country: str = Field(max_length=30)


ASK = "Name a city in France and its country."


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


@pytest.fixture
def llm(lc_engine) -> ChatFusionRAG:
    return ChatFusionRAG(engine=lc_engine, max_tokens=60)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_each_method_returns_the_model(llm, method):
    out = llm.with_structured_output(City, method=method).invoke(ASK)
    assert isinstance(out, City) and out.name


def test_dict_schemas_json_mode_and_include_raw(llm):
    schema = City.model_json_schema()
    as_dict = llm.with_structured_output(schema).invoke(ASK)
    assert isinstance(as_dict, dict) and set(as_dict) == {"name", "country"}
    anything = llm.with_structured_output(None, method="json_mode").invoke(ASK + " Answer in JSON.")
    assert isinstance(anything, dict)
    raw = llm.with_structured_output(City, include_raw=True).invoke(ASK)
    assert raw["parsing_error"] is None and isinstance(raw["parsed"], City)
    assert City.model_validate_json(raw["raw"].content) == raw["parsed"]
    with pytest.raises(InvalidArgumentError, match="method"):
        llm.with_structured_output(City, method="xml")


def test_a_required_tool_call_is_made(llm):
    for choice in ("any", "get_weather"):
        message = llm.bind_tools([get_weather], tool_choice=choice).invoke("Hello!")
        assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
        assert isinstance(message.tool_calls[0]["args"]["city"], str)


def test_logprobs_in_response_metadata_and_stream(lc_engine):
    llm = ChatFusionRAG(engine=lc_engine, max_tokens=6, logprobs=True, top_logprobs=2)
    message = llm.invoke("The capital of France is")
    content = message.response_metadata["logprobs"]["content"]
    assert len(content) == message.usage_metadata["output_tokens"]
    assert all(len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["token"] == e["token"] for e in content)
    streamed = [c.response_metadata.get("logprobs") for c in llm.stream("The capital of France is")]
    tokens = [e["token"] for lp in streamed if lp for e in lp["content"]]
    assert tokens == [e["token"] for e in content]
    assert "logprobs" not in ChatFusionRAG(engine=lc_engine, max_tokens=3).invoke("Hi").response_metadata
    with pytest.raises(InvalidArgumentError, match="top_logprobs"):
        ChatFusionRAG(engine=lc_engine, max_tokens=3, top_logprobs=2).invoke("Hi")
    assert json.dumps(content)  # plain JSON, as ChatOpenAI's
