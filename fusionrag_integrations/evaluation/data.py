"""Evaluation examples: CacheBlend-format JSON files, and a seeded synthetic multi-hop set."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    id: str
    passages: list[str]  # each "title\n\ntext", in retrieval order
    question: str
    answers: list[str]


def load_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """CacheBlend's format: a JSON list of {ctxs: [{title, text}], question, answers: [str]}."""
    raw = json.loads(Path(path).read_text())
    if isinstance(raw, dict):
        raw = raw.get("data") or list(raw.values())
    examples = []
    for i, item in enumerate(raw[:limit] if limit else raw):
        answers = item["answers"]
        answers = [a if isinstance(a, str) else a[0] for a in answers]  # 2WikiMQA nests them
        passages = [f"{c.get('title', '')}\n\n{c['text']}".strip() for c in item["ctxs"]]
        examples.append(Example(str(item.get("id", i)), passages, item["question"], answers))
    return examples


_SYLLABLES = ["ka", "lo", "mi", "ren", "tau", "vel", "dor", "sa", "qui", "bran", "el", "mo", "zan", "tir", "ul", "fen"]
_FILLER = [
    "Local records describe a quiet place with a small market and a stone bridge.",
    "Visitors often mention the long winters and the smell of pine in the air.",
    "A regional newspaper once called it unremarkable, which residents took as praise.",
    "The area is known for its orchards, its wool and an annual music festival.",
    "Several old families have lived there for generations and keep detailed diaries.",
]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def synthetic_examples(n: int, seed: int = 0, passages: int = 10) -> list[Example]:
    """Two-hop questions: passage A places a person in a town, passage B places the town in a
    country; the question asks for the person's country, so no single passage answers it.
    The other passages are distractors of the same shape (other people, other towns)."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        people = [f"{_name(rng, 2)} {_name(rng, 3)}" for _ in range(passages // 2)]
        towns = [_name(rng, 3) for _ in people]
        countries = [_name(rng, 2) + "ia" for _ in people]
        docs = []
        for person, town in zip(people, towns):
            docs.append(
                f"{person}\n\n{person} was born in the town of {town} and later worked there as a "
                f"{rng.choice(['baker', 'teacher', 'surveyor', 'printer', 'nurse'])}. {rng.choice(_FILLER)}"
            )
        for town, country in zip(towns, countries):
            docs.append(
                f"{town}\n\n{town} is a town in the north of {country}. {rng.choice(_FILLER)} {rng.choice(_FILLER)}"
            )
        rng.shuffle(docs)
        target = rng.randrange(len(people))
        examples.append(
            Example(f"syn-{seed}-{i}", docs, f"In which country was {people[target]} born?", [countries[target]])
        )
    return examples
