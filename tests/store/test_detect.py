"""Drop-in detection: exact matches only, longest wins, hash collisions cannot produce false matches."""

from __future__ import annotations

import numpy as np

from fusionrag_integrations.store import detect
from fusionrag_integrations.store.detect import ChunkIndex

A = "Alpha passage about the harbour town of Kellersby and its lighthouse."
B = "Beta passage: Amelia Varn founded the institute in 1894, it is said."
A_LONGER = A + " It was painted red in 1921."


def test_finds_every_indexed_text_in_order():
    index = ChunkIndex(window=16)
    for t in (A, B):
        index.add(t)
    prompt = f"Context:\n{B}\n\n{A}\nQuestion: where?"
    matches = index.find(prompt)
    assert [m.text for m in matches] == [B, A]
    assert all(prompt[m.start : m.end] == m.text for m in matches)


def test_longest_text_wins_and_matches_do_not_overlap():
    index = ChunkIndex(window=16)
    index.add(A)
    index.add(A_LONGER)
    matches = index.find(f"x {A_LONGER} y {A} z")
    assert [m.text for m in matches] == [A_LONGER, A]


def test_short_texts_are_not_indexed_and_removal_works():
    index = ChunkIndex(window=32)
    assert not index.add("too short")
    index.add(A)
    index.remove(A)
    assert index.find(f"..{A}..") == [] and len(index) == 0


def test_hash_collisions_are_verified_away(monkeypatch):
    """With every window hashing alike, only real matches may come back."""
    monkeypatch.setattr(detect, "_window_hashes", lambda codes, w: np.zeros(max(len(codes) - w + 1, 0), np.uint64))
    index = ChunkIndex(window=16)
    index.add(A)
    index.add(B)
    prompt = f"unrelated text that is long enough {B} more text"
    assert [m.text for m in index.find(prompt)] == [B]


def test_unicode_text():
    text = "Über die Brücke von Kellersby – ein Gedicht über Möwen, Nebel und Licht. 灯台"
    index = ChunkIndex(window=16)
    index.add(text)
    prompt = f"Quelle: {text}\nFrage?"
    [m] = index.find(prompt)
    assert prompt[m.start : m.end] == text
