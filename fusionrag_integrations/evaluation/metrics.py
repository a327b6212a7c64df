"""Answer quality (SQuAD-style F1 / exact match) and fidelity to full attention."""

from __future__ import annotations

import re
import string
from collections import Counter

from ..fidelity.measures import kl_divergence, teacher_forced_agreement  # noqa: F401 - the harness reads them here


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def f1_score(prediction: str, answers: list[str]) -> float:
    """Max over gold answers of word-level F1 on normalised text, prediction's first line only."""
    pred = normalize_answer(first_line(prediction)).split()
    best = 0.0
    for gold in answers:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def exact_match(prediction: str, answers: list[str]) -> float:
    pred = normalize_answer(first_line(prediction))
    return float(any(pred == normalize_answer(g) for g in answers))


def prefix_agreement(reference: list[int], tokens: list[int]) -> float:
    """Share of the reference's greedy tokens reproduced before the first divergence."""
    if not reference:
        return float(not tokens)
    same = 0
    for a, b in zip(reference, tokens):
        if a != b:
            break
        same += 1
    return same / len(reference)


def rouge_l(reference: str, prediction: str) -> float:
    from rouge_score import rouge_scorer

    if not reference.strip() and not prediction.strip():
        return 1.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return scorer.score(reference, prediction)["rougeL"].fmeasure
