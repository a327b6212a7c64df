"""Checking what callers pass, before any work: each bad input becomes a typed error naming the argument.

Python lets a string stand where a list of strings is expected and iterates its characters,
so `precompute("Paris")` would quietly store five one-letter chunks. Every public entry point
(engine, adapters, CLI) runs its arguments through these functions first; the error types are
FusionRAGError subclasses, so callers and the HTTP layer can tell bad input from a failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ContextLengthError, EmptyPromptError, InvalidArgumentError, InvalidSamplingError


def check_text(value: Any, name: str) -> str:
    """A str that encodes as UTF-8 (lone surrogates, e.g. from a bad decode, do not)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidArgumentError(
            f"{name} is not valid Unicode text (a lone surrogate at index {err.start}); decode its bytes with "
            "errors='replace' first"
        ) from None
    return value


def check_texts(values: Any, name: str) -> list[str]:
    """A list (or tuple, or other non-string iterable) of strings. A single string is refused,
    not iterated: one document per character is never what was meant."""
    if isinstance(values, (str, bytes)):
        raise InvalidArgumentError(
            f"{name} must be a list of strings, got a single {type(values).__name__}: "
            f"wrap it in a list ([{name[:-1] if name.endswith('s') else name}])"
        )
    if isinstance(values, Mapping) or not _iterable(values):
        raise InvalidArgumentError(f"{name} must be a list of strings, got {type(values).__name__}")
    return [check_text(v, f"{name}[{i}]") for i, v in enumerate(values)]


def check_salt(salt: Any) -> str | None:
    """A cache salt: None or a string (any text; only its hash is kept)."""
    if salt is not None and not isinstance(salt, str):
        raise InvalidArgumentError(f"cache_salt must be a string or None, got {type(salt).__name__}")
    return salt


def check_neighbors(neighbors: Any, count: int) -> list[list[str]]:
    """One list of neighbour texts per text."""
    if isinstance(neighbors, (str, bytes)) or isinstance(neighbors, Mapping) or not _iterable(neighbors):
        raise InvalidArgumentError(f"neighbors must be a list of lists of strings, got {type(neighbors).__name__}")
    lists = [check_texts(n, f"neighbors[{i}]") for i, n in enumerate(neighbors)]
    if len(lists) != count:
        raise InvalidArgumentError(f"neighbors needs one list per text: {len(lists)} lists for {count} texts")
    return lists


def check_stop(stop: Any) -> tuple[str, ...]:
    """None, one string, or a list of strings (as OpenAI, LangChain and LlamaIndex accept)."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, Mapping) or not _iterable(stop) or isinstance(stop, bytes):
        raise InvalidSamplingError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    out = []
    for s in stop:
        if not isinstance(s, str) or not s:
            raise InvalidSamplingError(f"stop must be non-empty strings, got {s!r}")
        out.append(check_text(s, "stop"))
    return tuple(out)


def check_logit_bias(bias: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's logit_bias: {token id: bias} (ids may be strings, as JSON keys are) or (id, bias) pairs;
    each bias in [-100, 100]. Sorted pairs, so equal settings compare equal."""
    if bias is None:
        return ()
    items = bias.items() if isinstance(bias, Mapping) else bias
    if isinstance(items, (str, bytes)) or not _iterable(items):
        raise InvalidSamplingError(f"logit_bias must map token ids to numbers, got {type(bias).__name__}")
    out: dict[int, float] = {}
    for item in items:
        if not isinstance(item, Sequence) or len(item) != 2:
            raise InvalidSamplingError(f"logit_bias entries are (token id, bias) pairs, got {item!r}")
        token, value = item
        if isinstance(token, str) and token.strip().isdigit():
            token = int(token)
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise InvalidSamplingError(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100.0 <= value <= 100.0:
            raise InvalidSamplingError(f"logit_bias values must be numbers in [-100, 100], got {value!r}")
        out[token] = float(value)
    return tuple(sorted(out.items()))


def check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise InvalidArgumentError(f"recompute_ratio must be a number in [0, 1], got {ratio!r}")
    return float(ratio)


def check_choices(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
        raise InvalidArgumentError(f"n (answers to the prompt) must be an integer from 1 to 128, got {n!r}")
    return n


def _iterable(value: Any) -> bool:
    return isinstance(value, Sequence) or hasattr(value, "__iter__")


def check_precompute(texts: Any, context: Any, neighbors: Any, show_progress: Any) -> tuple[list[str], list[list[str]]]:
    """engine.precompute's arguments -> (texts, the context texts of each)."""
    texts = check_texts(texts, "texts")
    if context is not None and neighbors is not None:
        raise InvalidArgumentError("pass context= (shared by all texts) or neighbors= (one list per text), not both")
    if show_progress is not None and not isinstance(show_progress, bool):
        raise InvalidArgumentError(f"show_progress must be True, False or None, got {show_progress!r}")
    if neighbors is not None:
        return texts, check_neighbors(neighbors, len(texts))
    return texts, [check_texts(context, "context") if context is not None else []] * len(texts)


def check_length(n_prompt: int, max_new_tokens: int, context_window: int) -> None:
    if n_prompt == 0:
        raise EmptyPromptError("the prompt encodes to zero tokens")
    if n_prompt + max_new_tokens > context_window:
        raise ContextLengthError(
            f"prompt of {n_prompt} tokens + max_new_tokens={max_new_tokens} exceeds the context window of "
            f"{context_window} tokens; shorten the prompt or lower max_new_tokens"
        )
