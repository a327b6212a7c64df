"""Which chunks a request carries, seen by the gateway before any replica is chosen; and which replica
owns a chunk (rendezvous hashing).

The gateway has no model. It finds chunk texts in a request's messages with the same detector the
engines use (store/detect.py), over the chunk catalog the replicas share in Redis; without a shared
catalog, each long paragraph stands for a chunk (RAG prompts join chunks with blank lines). A chunk's
owner is the replica with the highest hash of (chunk, replica): every gateway agrees without talking,
and when a replica goes away only its own chunks move. A request goes to the replica that owns most
of its chunk text, so that replica's GPU / CPU tiers hold what it will be asked for again.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from ..store.detect import ChunkIndex

_PARAGRAPH = re.compile(r"\n\s*\n")
Tokens = list[tuple[str, int]]  # (chunk hash, weight: its length in characters)


def chunk_token(text: str) -> str:
    return hashlib.blake2b(text.strip().encode(), digest_size=12).hexdigest()


def request_text(path: str, body: dict[str, Any]) -> str:
    """The text of a request in which chunks may appear: message contents (chat), input items and
    instructions (responses), or a completion prompt."""
    if path.endswith("chat/completions"):
        return "\n\n".join(_texts(m.get("content") for m in body.get("messages") or [] if isinstance(m, dict)))
    if path.endswith("/responses"):
        items = body.get("input")
        contents = [items] if isinstance(items, str) else [
            i.get("content", i.get("output")) for i in items or [] if isinstance(i, dict)
        ]  # fmt: skip
        return "\n\n".join(_texts([body.get("instructions"), *contents]))
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else "\n\n".join(p for p in prompt or [] if isinstance(p, str))


def _texts(contents: Iterable[Any]) -> list[str]:
    """The text of message contents: strings, and the text parts of lists of parts."""
    parts: list[str] = []
    for content in contents:
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return parts


def routing_tokens(path: str, body: dict[str, Any], index: ChunkIndex | None, min_chars: int = 32) -> Tokens:
    """The chunks of a request as (hash, weight): the texts of a chunk ingest, the given `chunks`, or the
    catalogued chunks found in its text (paragraphs when there is no catalog)."""
    if path.endswith("/chunks"):
        texts = body.get("texts") or []
    elif isinstance(body.get("chunks"), list):
        texts = body["chunks"]
    else:
        text = request_text(path, body)
        if index is not None and len(index):
            texts = [m.text for m in index.find(text)]
        else:
            texts = [p for p in _PARAGRAPH.split(text) if len(p.strip()) >= min_chars]
    return [(chunk_token(t), len(t)) for t in texts if isinstance(t, str) and t.strip()]


def owner(token: str, replicas: Sequence[str]) -> str:
    """The replica with the highest hash of (token, replica): rendezvous hashing."""
    return max(replicas, key=lambda r: hashlib.blake2b(f"{token}|{r}".encode(), digest_size=8).digest())


def ranked(tokens: Iterable[tuple[str, int]], replicas: Sequence[str]) -> list[str]:
    """Replicas by the chunk text they own in this request, most first (ties: in the given order)."""
    votes: Counter[str] = Counter()
    for token, weight in tokens:
        votes[owner(token, replicas)] += weight
    return sorted(replicas, key=lambda r: -votes[r])
