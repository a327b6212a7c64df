"""One chat-template message from a framework's message, tool calls and results included: both
adapters extract (role, content, calls, result id/name) in their framework's terms and call this."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .tools import call_as_text, result_as_user_turn


def engine_message(
    role: str,
    content: str,
    tool_calls: Sequence[dict[str, Any]] = (),
    tool_result: tuple[str | None, str] | None = None,
    native_tools: bool = True,
) -> dict[str, Any]:
    """tool_calls: {"id", "name", "args"} dicts an assistant turn made; tool_result: (call id, tool name)
    of a tool turn. Templates that support tools get them in their own fields; otherwise a call is
    written as its JSON and a result as a user turn."""
    msg: dict[str, Any] = {"role": role if role in ("system", "user", "assistant", "tool") else "user"}
    msg["content"] = content
    if tool_result is not None:
        call_id, name = tool_result
        if not native_tools:
            return result_as_user_turn(name, content)
        msg["tool_call_id"] = call_id
    elif tool_calls:
        if native_tools:
            msg["tool_calls"] = [
                {"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c["args"]}}
                for c in tool_calls
            ]
        else:
            msg["content"] = "\n".join([content, *(call_as_text(c["name"], c["args"]) for c in tool_calls)]).strip()
    return msg
