"""Drop-in detection: exact matches only, longest wins, hash collisions cannot produce false matches."""

from __future__ import annotations

import numpy as np
import pytest

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
    alike = lambda codes, w: np.zeros(max(len(codes) - w + 1, 0), np.uint64)  # noqa: E731
    monkeypatch.setattr(detect, "_window_hashes", alike)
    monkeypatch.setattr(detect, "_rolling_hashes", alike)
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


@pytest.mark.parametrize("window", [1, 16, 32])
def test_the_prefix_sum_hashes_equal_the_plain_definition(window):
    """The prompt's hashes (one prefix sum) equal the polynomial definition, window by window, on fresh random
    code points (the whole Unicode range), from texts shorter than the window to longer than any before."""
    rng = np.random.default_rng()
    for n in (0, window - 1, window, window + 1, 5_000, 300_000):
        codes = rng.integers(0, 0x110000, max(n, 0)).astype(np.uint64)
        fast, plain = detect._rolling_hashes(codes, window), detect._window_hashes(codes, window)
        assert fast.shape == plain.shape and np.array_equal(fast, plain)


def test_the_packed_filter_reads_as_the_byte_per_bit_one():
    """The filter `find` reads (8 bits a byte) gives the same answer as the one adds maintain, at fresh random
    offsets over a filter with fresh random bits set."""
    rng = np.random.default_rng()
    plain = np.zeros(1 << detect._FILTER_BITS, dtype=bool)
    plain[rng.integers(0, plain.size, 20_000)] = True
    packed = np.packbits(plain, bitorder="little")
    index = rng.integers(0, plain.size, 100_000).astype(np.uint64)
    assert np.array_equal(detect._bits_set(packed, index) != 0, plain[index])


def test_a_text_added_after_a_search_is_found_by_the_next():
    """The packed filter is rebuilt after adds and removes: nothing found before is missed or kept after."""
    index = ChunkIndex(window=16)
    index.add(A)
    prompt = f"{A} and {B}"
    assert [m.text for m in index.find(prompt)] == [A]
    index.add(B)
    assert [m.text for m in index.find(prompt)] == [A, B]
    index.remove(A)
    assert [m.text for m in index.find(prompt)] == [B]
