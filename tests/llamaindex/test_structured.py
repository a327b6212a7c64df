"""structured_predict, as_structured_llm and a required tool call (LlamaIndex's own programs), logprobs,
with the real SmolLM2: a required call is grammar-constrained, so the 135M model's answers parse."""

from __future__ import annotations

import asyncio

from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel, Field

from fusionrag_integrations.llamaindex import FusionRAGLLM


class City(BaseModel):
    """A city and its country."""

    name: str = Field(max_length=30)
    country: str = Field(max_length=30)


PROMPT = PromptTemplate("Name a city in {country} and its country.")


def test_structured_predict_and_structured_llm(li_engine):
    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=60)
    city = llm.structured_predict(City, PROMPT, country="France")
    assert isinstance(city, City) and city.name
    assert isinstance(asyncio.run(llm.astructured_predict(City, PROMPT, country="Spain")), City)
    structured = llm.as_structured_llm(City)
    response = structured.chat([ChatMessage(role="user", content="Name a city in Italy and its country.")])
    assert isinstance(response.raw, City) and City.model_validate_json(response.message.content) == response.raw
    partials = list(llm.stream_structured_predict(City, PROMPT, country="Japan"))
    assert isinstance(partials[-1], City)


def test_a_required_tool_call_is_made(li_engine):
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=40)
    response = llm.chat_with_tools([FunctionTool.from_defaults(get_weather)], "Hello!", tool_required=True)
    calls = llm.get_tool_calls_from_response(response)
    assert calls[0].tool_name == "get_weather" and isinstance(calls[0].tool_kwargs["city"], str)


def test_logprobs(li_engine):
    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=5, logprobs=True, top_logprobs=2)
    out = llm.complete("The capital of France is", formatted=True)
    assert len(out.logprobs) == out.raw["usage"]["completion_tokens"]
    assert all(len(top) == 2 and top[0].logprob >= top[1].logprob for top in out.logprobs)
    streamed = [top for r in llm.stream_complete("The capital of France is", formatted=True) if r.raw is None
                for top in r.logprobs or []]  # fmt: skip
    assert [t[0].token for t in streamed] == [t[0].token for t in out.logprobs]
    chat = llm.chat([ChatMessage(role="user", content="Hi")])
    assert chat.logprobs and all(top[0].logprob <= 0 for top in chat.logprobs)
    assert FusionRAGLLM(engine=li_engine, max_new_tokens=3).complete("Hi").logprobs is None
