"""LangChain messages -> chat-template dicts, tool calls and results included."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from ..integrations.tools import call_as_text, result_as_user_turn

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "chat": "user"}


def to_engine_messages(messages: Sequence[BaseMessage], native_tools: bool = True) -> list[dict[str, Any]]:
    """LangChain messages -> chat-template dicts. Tool calls and results go in the template's own fields
    when it supports tools; otherwise they are written as text (the call's JSON, a user turn for the result)."""
    out = []
    for m in messages:
        role = getattr(m, "role", None) if m.type == "chat" else _ROLES.get(m.type, "user")
        msg: dict[str, Any] = {
            "role": role if role in ("system", "user", "assistant", "tool") else "user",
            "content": m.text if isinstance(m.text, str) else m.text(),
        }
        if isinstance(m, ToolMessage):
            if native_tools:
                msg["tool_call_id"] = m.tool_call_id
            else:
                msg = result_as_user_turn(m.name or m.tool_call_id, msg["content"])
        if isinstance(m, AIMessage) and m.tool_calls:
            if native_tools:
                msg["tool_calls"] = [
                    {"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c["args"]}}
                    for c in m.tool_calls
                ]
            else:
                calls = "\n".join(call_as_text(c["name"], c["args"]) for c in m.tool_calls)
                msg["content"] = f"{msg['content']}\n{calls}".strip()
        out.append(msg)
    return out
