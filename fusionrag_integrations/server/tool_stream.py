"""Streaming a chat answer when tools are offered: text streams as content, a tool call as OpenAI's
`delta.tool_calls` (a first delta with the call's id and name, then the arguments' text as it is
generated), finishing with "tool_calls".

Until the answer's first non-space characters are seen, nothing is sent: text that opens as a call
would (`{`, `<tool_call>`, `<|python_tag|>`, a code fence) is held; anything else streams as content
from there on. A held answer whose opening is our call format, `{"name": "...", "arguments": `, (what
a required call is constrained to) streams its arguments as they come; one in another format is
parsed when complete (its name and arguments in two deltas), or sent as content if it is no call.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from ..integrations.tools import parse_tool_calls

CALL_OPENINGS = ("{", "<tool_call>", "<|python_tag|>", "```")
OUR_OPENING = re.compile(r'\s*\{"name":\s*"((?:[^"\\]|\\.)*)",\s*"arguments":\s*(?=\S)')


class ToolCallStream:
    def __init__(self, tool_names: set[str]) -> None:
        self.names = tool_names
        self.mode = "undecided"  # -> "content" | "held" | "arguments"
        self.text = ""  # everything generated
        self.sent = 0  # of the arguments' text (mode "arguments"): characters sent
        self.opening = 0  # length of our opening, in "arguments" mode
        self.call_id = f"call_{uuid.uuid4().hex[:12]}"
        self.called = False

    def push(self, text: str) -> list[dict[str, Any]]:
        """The deltas for a new piece of text (none while undecided or held)."""
        self.text += text
        if self.mode == "undecided":
            head = self.text.lstrip()
            if not head:
                return []
            if any(o.startswith(head) or head.startswith(o) for o in CALL_OPENINGS):
                self.mode = "held"
            else:
                self.mode = "content"
                return [{"content": self.text}]
        if self.mode == "content":
            return [{"content": text}] if text else []
        if self.mode == "held" and (match := OUR_OPENING.match(self.text)):
            name = json.loads(f'"{match.group(1)}"')
            if name in self.names:
                self.mode, self.opening, self.called = "arguments", match.end(), True
                first = {
                    "index": 0,
                    "id": self.call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
                return [{"tool_calls": [first]}, *self._arguments(final=False)]
        return self._arguments(final=False) if self.mode == "arguments" else []

    def finish(self) -> list[dict[str, Any]]:
        """The deltas still owed once generation ended."""
        if self.mode == "arguments":
            return self._arguments(final=True)
        if self.mode != "held":
            return []
        parsed = parse_tool_calls(self.text, self.names)
        if not parsed.tool_calls:
            return [{"content": self.text}]
        self.called = True
        deltas: list[dict[str, Any]] = [{"content": parsed.content}] if parsed.content else []
        for i, call in enumerate(parsed.tool_calls):
            head = {
                "index": i,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            deltas += [
                {"tool_calls": [head]},
                {"tool_calls": [{"index": i, "function": {"arguments": json.dumps(call["args"])}}]},
            ]
        return deltas

    def _arguments(self, final: bool) -> list[dict[str, Any]]:
        """The arguments' text after what was sent; the closing brace of our object is held back (the
        last character until the end, then dropped with any trailing space)."""
        body = self.text[self.opening :]
        end = len(body.rstrip()) - 1 if final else len(body) - 1
        if final and not body.rstrip().endswith("}"):  # cut short (length): send what there is
            end = len(body)
        chunk, self.sent = body[self.sent : max(end, self.sent)], max(end, self.sent)
        return [{"tool_calls": [{"index": 0, "function": {"arguments": chunk}}]}] if chunk else []


def _head(index: int, call_id: str, name: str) -> dict[str, Any]:
    """A call's first delta: its id and name, its arguments still empty (as OpenAI sends it)."""
    return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}


def tool_stream_chunks(base: dict[str, Any], piece_text: str, final: bool, first: bool, stream: ToolCallStream):
    """One piece's chat chunk (`base`, as stream_chunk made it) as the chunks its deltas need: the first
    carries the role and the piece's logprobs, the last the finish reason ("tool_calls" after a call) and
    the statistics; a piece with nothing to send yet becomes no chunk (unless it is the first or last)."""
    deltas = stream.push(piece_text) + (stream.finish() if final else [])
    choice = base["choices"][0]
    if not deltas and not (first or final or choice.get("logprobs")):
        return []
    chunks = []
    for i, delta in enumerate(deltas or [{}]):
        role = {"role": "assistant"} if first and i == 0 else {}
        out = {
            "index": 0,
            "delta": {**role, **delta},
            "finish_reason": None,
            "logprobs": choice.get("logprobs") if i == 0 else None,
        }
        chunks.append({**{k: v for k, v in base.items() if k not in ("choices", "fusionrag")}, "choices": [out]})
    if final:
        chunks[-1]["choices"][0]["finish_reason"] = "tool_calls" if stream.called else choice["finish_reason"]
        if "fusionrag" in base:
            chunks[-1]["fusionrag"] = base["fusionrag"]
    return chunks
