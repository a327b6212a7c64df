"""LlamaIndex chat messages -> chat-template dicts (tool calls and results as in the LangChain adapter)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole

from ..errors import InvalidArgumentError
from ..integrations.messages import engine_message

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def to_engine_messages(messages: Sequence[ChatMessage], native_tools: bool = True) -> list[dict[str, Any]]:
    """LlamaIndex messages -> chat-template dicts; tool calls and results as in the LangChain adapter."""
    out = []
    names: dict[str, str] = {}  # tool call id -> tool name (agents' tool messages carry only the id)
    for m in messages:
        role = _ROLES.get(m.role, "user")
        calls = m.additional_kwargs.get("tool_calls") or []
        names.update({c["id"]: c["name"] for c in calls})
        result = None
        if role == "tool":
            call_id = m.additional_kwargs.get("tool_call_id")
            result = (call_id, m.additional_kwargs.get("name") or names.get(call_id or "") or call_id or "tool")
        out.append(engine_message(role, m.content or "", calls, result, native_tools))
    return out


def checked_messages(messages: Any) -> list[ChatMessage]:
    """A list of ChatMessage, checked before LlamaIndex's callbacks see it (they would fail with a
    pydantic error of their own on anything else)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidArgumentError(f"messages must be a list of ChatMessage, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, ChatMessage):
            raise InvalidArgumentError(f"messages[{i}] must be a ChatMessage, got {type(m).__name__}")
    return list(messages)
