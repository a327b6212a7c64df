"""CacheBlend's MuSiQue prompt (blend_musique.py), as a chat message for instruct models."""

from __future__ import annotations

from .data import Example

PREFIX = (
    "You will be asked a question after reading several passages. Please directly answer the question based on "
    "the given passages. Do NOT repeat the question. The answer should be within 5 words..\nPassages:\n"
)
QUERY = (
    "\n\nAnswer the question directly based on the given passages. Do NOT repeat the question. The answer should "
    "be within 5 words. \nQuestion:"
)


def normalize_question(question: str) -> str:
    question = question.strip()
    if not question.endswith("?"):
        question += "?"
    return question[0].lower() + question[1:]


def musique_messages(example: Example) -> list[dict]:
    passages = "".join(f"{p}\n\n" for p in example.passages)
    content = f"{PREFIX}{passages}{QUERY}{normalize_question(example.question)}\nAnswer:"
    return [{"role": "user", "content": content}]
