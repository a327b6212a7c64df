"""Prompts: chat messages -> the model's own chat template text; text -> token ids."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..errors import ChatTemplateError, EmptyPromptError, InvalidArgumentError
from ..inputs import check_text
from ..model.config import Tokenizer

Message = Mapping[str, Any] | tuple[str, str]
Prompt = str | Sequence[Message]
ROLES = ("system", "user", "assistant", "tool")


def normalize_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Dicts or (role, content) pairs -> dicts; consecutive same-role messages merged.

    Merging matters because many templates (Llama-2, Mistral) raise on two user turns in a
    row, and frameworks do send them (LangChain's double-message conversations).
    """
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        msg = _message_dict(m, i)
        role = msg["role"]
        mergeable = role != "tool" and not msg.get("tool_calls")
        if out and out[-1]["role"] == role and mergeable and not out[-1].get("tool_calls"):
            out[-1]["content"] = f"{out[-1]['content']}\n\n{msg['content']}" if out[-1]["content"] else msg["content"]
        else:
            out.append(msg)
    if not out:
        raise EmptyPromptError("no messages given")
    return out


def _message_dict(m: Any, i: int) -> dict[str, Any]:
    """One message as a checked dict: a known role, text content (OpenAI content parts joined); content
    may be None only on an assistant turn that calls tools, as in the OpenAI API."""
    if isinstance(m, tuple) and len(m) == 2:
        msg = {"role": m[0], "content": m[1]}
    elif isinstance(m, Mapping):
        msg = dict(m)
    else:
        raise ChatTemplateError(
            f"messages[{i}] must be a dict with 'role' and 'content' (or a (role, content) pair), "
            f"got {type(m).__name__}: a plain prompt is one string, not a list of strings"
        )
    role, content = msg.get("role"), msg.get("content")
    if role not in ROLES:
        raise ChatTemplateError(f"messages[{i}]: role must be one of {ROLES}, got {role!r}")
    if isinstance(content, list):  # OpenAI-style content parts: keep the text ones
        content = "".join(_part_text(p, i) for p in content)
    if content is None:
        if not (role == "assistant" and msg.get("tool_calls")):
            raise ChatTemplateError(f"messages[{i}] ({role}) has no content")
        content = ""
    if not isinstance(content, str):
        raise ChatTemplateError(f"messages[{i}]: content must be text, got {type(content).__name__}")
    msg["content"] = check_text(content, f"messages[{i}].content")
    return msg


def _part_text(part: Any, i: int) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, Mapping) and isinstance(part.get("text", ""), str):
        return part.get("text", "")
    raise ChatTemplateError(f"messages[{i}]: a content part must be text or {{'type': 'text', 'text': ...}}")


def render_chat(tokenizer: Tokenizer, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> str:
    """The tokenizer's chat template with a generation prompt (or continuing a final assistant turn)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "chat messages were given but this tokenizer has no chat template; pass a plain string prompt "
            "or a model with a chat template"
        )
    msgs = normalize_messages(messages)
    if tools is not None and (isinstance(tools, (str, Mapping)) or not all(isinstance(t, Mapping) for t in tools)):
        raise InvalidArgumentError("tools must be a list of tool schemas (dicts)")
    continue_final = msgs[-1]["role"] == "assistant"
    try:
        return tokenizer.apply_chat_template(
            msgs,
            tools=list(tools) if tools else None,
            tokenize=False,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
    except Exception as exc:  # jinja TemplateError / raise_exception() inside the template
        raise ChatTemplateError(f"the chat template rejected these messages: {exc}") from None


def encode_text(tokenizer: Tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def encode_texts(tokenizer: Tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """Each text's ids, as encode_text gives them, from one tokenizer call: a prompt holds a fresh piece
    between every two chunks, and each call costs tens of microseconds around the tokenising itself. Those
    pieces are mostly one separator repeated, so each distinct text is tokenised once (a batch is spread
    over the tokenizer's threads, whose wake-up costs more than tokenising a separator)."""
    if not texts:
        return []
    unique = list(dict.fromkeys(texts))
    ids = tokenizer(unique, add_special_tokens=add_special_tokens)["input_ids"]
    by_text = dict(zip(unique, ids))
    return [list(by_text[t]) for t in texts]


def render_prompt(tokenizer: Tokenizer, prompt: Prompt, tools: Sequence[dict] | None = None) -> tuple[str, bool]:
    """-> (text, add_special_tokens). A rendered chat already holds its special tokens."""
    if isinstance(prompt, str):
        if not prompt:
            raise EmptyPromptError("the prompt is empty")
        return check_text(prompt, "prompt"), True
    if isinstance(prompt, (Mapping, bytes)) or not isinstance(prompt, Sequence):
        raise InvalidArgumentError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
    return render_chat(tokenizer, cast("Sequence[Message]", prompt), tools), False


def split_at_matches(text: str, matches: list) -> list[tuple[str, str]]:
    """-> [("text", fresh text) | ("chunk", chunk text), ...] in prompt order; empty fresh pieces dropped,
    except a leading one so that a BOS (add_special_tokens) always has a segment to attach to."""
    segments: list[tuple[str, str]] = []
    cursor = 0
    for m in matches:
        if m.start > cursor or not segments:
            segments.append(("text", text[cursor : m.start]))
        segments.append(("chunk", m.text))
        cursor = m.end
    if cursor < len(text):
        segments.append(("text", text[cursor:]))
    return segments


def split_paragraphs(text: str, min_chars: int, special_tokens: Sequence[str] = ()) -> list[tuple[bool, str]]:
    """Fresh text -> [(learnable, piece), ...]: paragraphs of at least `min_chars`, delimited by blank lines
    and by special tokens (chat-template markup ends a message), are their own pieces, stripped, with the
    whitespace and markup around them in the neighbouring pieces, so each is tokenised alone, exactly as
    a precomputed chunk of the same text would be."""
    separators = [r"\n\s*\n", *(re.escape(t) for t in sorted(special_tokens, key=len, reverse=True) if t)]
    pieces: list[tuple[bool, str]] = []
    rest = ""
    for part in re.split("(" + "|".join(separators) + ")", text):
        stripped = part.strip()
        if len(stripped) >= min_chars:
            lead = part[: len(part) - len(part.lstrip())]
            if rest + lead:
                pieces.append((False, rest + lead))
            pieces.append((True, stripped))
            rest = part[len(part.rstrip()) :]
        else:
            rest += part
    if rest or not pieces:
        pieces.append((False, rest))
    return pieces
