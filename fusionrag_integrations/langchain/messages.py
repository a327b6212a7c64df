"""LangChain messages -> chat-template dicts, tool calls and results included."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from ..integrations.messages import engine_message

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "chat": "user"}


def to_engine_messages(messages: Sequence[BaseMessage], native_tools: bool = True) -> list[dict[str, Any]]:
    """LangChain messages -> chat-template dicts. Tool calls and results go in the template's own fields
    when it supports tools; otherwise they are written as text (the call's JSON, a user turn for the result)."""
    out = []
    for m in messages:
        role = str(getattr(m, "role", "user")) if m.type == "chat" else _ROLES.get(m.type, "user")
        content = m.text if isinstance(m.text, str) else m.text()
        result = (m.tool_call_id, m.name or m.tool_call_id) if isinstance(m, ToolMessage) else None
        calls = [dict(c) for c in m.tool_calls] if isinstance(m, AIMessage) else []
        out.append(engine_message(role, content, calls, result, native_tools))
    return out
