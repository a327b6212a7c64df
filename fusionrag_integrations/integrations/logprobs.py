"""Log-probabilities in OpenAI's two layouts (chat: `logprobs.content`, completions: parallel lists), for
the server and the adapters (LangChain's ChatOpenAI and LlamaIndex's OpenAI read the chat layout)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidArgumentError
from ..outputs import TokenLogprob


def logprob_count(logprobs: Any, top_logprobs: Any) -> int | None:
    """The frameworks' pair (logprobs: bool, top_logprobs: int) -> the engine's SamplingParams.logprobs."""
    if logprobs is None or logprobs is False:
        if top_logprobs:
            raise InvalidArgumentError("top_logprobs needs logprobs=True")
        return None
    if logprobs is True:
        return top_logprobs or 0
    return logprobs  # already the engine's count (validated by SamplingParams)


def pop_logprob_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings with top_logprobs folded into logprobs."""
    out = {k: v for k, v in values.items() if k != "top_logprobs"}
    out["logprobs"] = logprob_count(values.get("logprobs"), values.get("top_logprobs"))
    return out


Decode = Callable[[int], str]


def _entry(token: int, logprob: float, decode: Decode) -> dict[str, Any]:
    text = decode(token)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(logprobs: list[TokenLogprob], decode: Decode) -> dict[str, Any]:
    """OpenAI's chat layout: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""
    return {
        "content": [
            {**_entry(lp.token_id, lp.logprob, decode), "top_logprobs": [_entry(t, v, decode) for t, v in lp.top]}
            for lp in logprobs
        ]
    }


def completion_logprobs(logprobs: list[TokenLogprob], decode: Decode, offset: int = 0) -> dict[str, Any]:
    """OpenAI's completions layout: tokens, token_logprobs, top_logprobs (token -> logprob), text_offset."""
    tokens = [decode(lp.token_id) for lp in logprobs]
    offsets, at = [], offset
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{decode(t): v for t, v in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }
