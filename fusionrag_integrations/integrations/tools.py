"""Tool calling for local chat models: describing tools to the model and parsing its calls.

Chat templates that support tools (Qwen2.5, Llama-3.1, Hermes-style) receive the tool
schemas through `apply_chat_template(tools=...)`; for a template without tool support the
tools are described in a system message with the JSON reply format. Calls are parsed from
the generated text in the two formats models actually emit:
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes, Qwen) and a bare JSON
object `{"name": ..., "parameters": {...}}` (Llama-3.1, and our instruction's format).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..response_format import ResponseFormat

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


@dataclass
class ParsedOutput:
    content: str  # the text that is not a tool call
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "args", "id"}


def template_supports_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in template


def tool_instruction(tools: list[dict], tool_choice: str | None = None) -> str:
    """A system message for models whose template has no tool support."""
    specs = "\n".join(json.dumps(t.get("function", t)) for t in tools)
    must = {"any": "You must call one of the tools.", "required": "You must call one of the tools."}.get(
        tool_choice or "",
        f"You must call the tool {tool_choice}."
        if tool_choice not in (None, "auto", "none")
        else "Call a tool only if it helps answer.",
    )
    return (
        "You can call these tools:\n" + specs + "\n\nTo call a tool, reply with only a JSON object: "
        '{"name": <tool name>, "arguments": {<argument name>: <value>}}. ' + must
    )


def call_as_text(name: str, args: dict[str, Any]) -> str:
    """An earlier tool call, written as the JSON the instruction asks for (templates without tool support)."""
    return json.dumps({"name": name, "arguments": args})


def result_as_user_turn(name: str, content: str) -> dict[str, str]:
    """A tool result as a user turn (templates without a tool role or tool support)."""
    return {"role": "user", "content": f"Tool result ({name}): {content}"}


def prompt_with_tools(
    prompt: list[dict], tools: list[dict] | None, tool_choice: str | None, native: bool
) -> tuple[list[dict], list[dict] | None]:
    """-> (messages, tools for the chat template): native templates get the schemas, others an instruction."""
    if not tools or native:
        return prompt, tools or None
    return [{"role": "system", "content": tool_instruction(tools, tool_choice)}, *prompt], None


def parse_tool_calls(text: str, tool_names: set[str] | None = None) -> ParsedOutput:
    """Split generated text into plain content and tool calls (names checked against tool_names if given)."""
    calls: list[dict[str, Any]] = []
    content = text
    tagged = _TAGGED.findall(text)
    candidates = tagged if tagged else [_strip_python_tag(text)]
    for raw in candidates:
        call = _as_call(raw, tool_names)
        if call is not None:
            calls.append(call)
    if calls:
        content = _TAGGED.sub("", text).strip() if tagged else ""
    return ParsedOutput(content, calls)


def _strip_python_tag(text: str) -> str:
    text = text.strip()
    return text.removeprefix("<|python_tag|>").strip()


def _as_call(raw: str, tool_names: set[str] | None) -> dict[str, Any] | None:
    raw = raw.strip()
    if raw.startswith("```"):
        raw = raw.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if isinstance(obj, dict) and "function" in obj and isinstance(obj["function"], dict):
        obj = obj["function"]
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict) or (tool_names is not None and obj["name"] not in tool_names):
        return None
    return {"name": obj["name"], "args": args, "id": f"call_{uuid.uuid4().hex[:12]}"}


def tool_call_format(tools: list[dict] | None, tool_choice: str | None, native: bool) -> ResponseFormat | None:
    """When a call is required (tool_choice "required", or a tool's name), the answer is constrained to
    the call the instruction asks for: {"name": one of the tools, "arguments": that tool's parameters}.
    Only for templates without tool support (ours is the only format we know the model is told to use);
    "auto" stays free text, as the model may answer without a call."""
    if not tools or native or tool_choice in (None, "auto", "none"):
        return None
    functions = [t.get("function", t) for t in tools]
    if tool_choice not in ("required", "any"):
        functions = [f for f in functions if f.get("name") == tool_choice]
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]}, "arguments": f.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"],
        }
        for f in functions
    ]
    return ResponseFormat.json_schema(calls[0] if len(calls) == 1 else {"anyOf": calls})
