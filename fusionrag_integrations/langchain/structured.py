"""`ChatFusionRAG.with_structured_output`: the three methods ChatOpenAI offers, each enforced by the
engine's grammar (runtime/grammar.py), so a small local model's answer always parses.

- "json_schema" (the default, as ChatOpenAI's): the answer is constrained to the schema's JSON.
- "function_calling": the schema becomes a tool the model must call; the call is constrained to it.
- "json_mode": any JSON object (the prompt should say which keys).
A pydantic class comes back as an instance, a dict schema (JSON schema, OpenAI tool, TypedDict) as a dict.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from ..errors import InvalidArgumentError

METHODS = ("json_schema", "function_calling", "json_mode")


def _is_model(schema: Any) -> bool:
    """A pydantic class, v2 or v1 (LangChain's standard tests use both)."""
    return isinstance(schema, type) and is_basemodel_subclass(schema)


def structured_output(
    llm, schema: Any, method: str, include_raw: bool, strict: bool | None, kwargs: dict[str, Any]
) -> Runnable:
    """The runnable `with_structured_output` returns (strict is accepted: every method is enforced)."""
    if kwargs:
        raise InvalidArgumentError(f"with_structured_output: unsupported argument(s) {sorted(kwargs)}")
    if method not in METHODS:
        raise InvalidArgumentError(f"with_structured_output: method must be one of {METHODS}, got {method!r}")
    if schema is None and method != "json_mode":
        raise InvalidArgumentError(f"with_structured_output: method {method!r} needs a schema")
    parser: Runnable
    trace = {"ls_structured_output_format": {"kwargs": {"method": method}, "schema": schema}}
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]
        bound = llm.bind_tools([schema], tool_choice=name, **trace)
        parser = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)
            if _is_model(schema)
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    else:
        if method == "json_mode":
            response_format: dict[str, Any] = {"type": "json_object"}
        else:
            json_schema = convert_to_json_schema(schema)
            response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": json_schema}}
        bound = llm.bind(response_format=response_format, **trace)
        parser = PydanticOutputParser(pydantic_object=schema) if _is_model(schema) else JsonOutputParser()
    if not include_raw:
        return bound | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks([fallback], exception_key="parsing_error")
