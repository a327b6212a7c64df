"""Finding known chunk texts inside a rendered prompt, in time linear in the prompt's length.

Every indexed chunk is keyed by a polynomial hash of its first W characters (its anchor).
The prompt's hashes at every offset come from one prefix sum (numpy; a handful of passes over the
prompt whatever W, where the plain definition takes 2W: `_window_hashes` keeps it as the reference). A
bitmap over the hashes' top bits filters them in one gather, whatever the number of
stored chunks (packed 8 to a byte, 512 KB: the gather's random reads stay in the CPU's caches, which a
forward pass between two requests has flushed; a byte per bit, 4 MB, made detection twice as slow
then); the few survivors are looked up in a dict, and each hit is verified by a
plain string comparison, so a hash collision can never produce a false match.

Chunks are indexed by their text stripped of surrounding whitespace: LlamaIndex strips
node text before joining, LangChain users often join with custom separators, so the
whitespace around a chunk belongs to the prompt, not to the chunk.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_BASE = np.uint64(1_000_003)
_INVERSE = np.uint64(pow(1_000_003, -1, 1 << 64))  # the base is odd, so invertible modulo 2**64
_FILTER_BITS = 22  # 4 MB bitmap: ~0.25% of prompt offsets pass it with 10,000 chunks stored
_FILTER_SHIFT = np.uint64(64 - _FILTER_BITS)


@dataclass(frozen=True)
class Match:
    start: int  # character offsets in the prompt
    end: int
    text: str  # the indexed (stripped) chunk text


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def _window_hashes(codes: np.ndarray, window: int) -> np.ndarray:
    """Hash of codes[i : i + window] for every i (wrapping uint64 arithmetic)."""
    n = codes.shape[0] - window + 1
    h = np.zeros(max(n, 0), dtype=np.uint64)
    if n <= 0:
        return h
    with np.errstate(over="ignore"):
        for j in range(window):
            h = h * _BASE + codes[j : j + n]
    return h


class _Powers:
    """BASE**i and BASE**-i modulo 2**64 for i < capacity, grown by doubling (shared, read-only arrays)."""

    def __init__(self) -> None:
        self.pair = (np.ones(0, dtype=np.uint64), np.ones(0, dtype=np.uint64))  # replaced whole: one consistent read

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pair
        if pair[0].shape[0] < n:
            size = max(n, 2 * pair[0].shape[0], 1024)
            pair = self.pair = (_geometric(_BASE, size), _geometric(_INVERSE, size))
        return pair


def _geometric(ratio: np.uint64, size: int) -> np.ndarray:
    """[1, ratio, ratio**2, ...] modulo 2**64 (uint64 throughout: a mix with int64 would go through float64)."""
    steps = np.full(size, ratio, dtype=np.uint64)
    steps[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(steps, dtype=np.uint64)


_POWERS = _Powers()


def _rolling_hashes(codes: np.ndarray, window: int) -> np.ndarray:
    """`_window_hashes` from a prefix sum: with S[k] = sum_{m<k} c_m B^-m, the window at i hashes to
    B^(i+W-1) (S[i+W] - S[i]), all modulo 2**64 (uint64 arithmetic wraps)."""
    n = codes.shape[0] - window + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    up, down = _POWERS.upto(codes.shape[0])
    with np.errstate(over="ignore"):
        prefix = np.zeros(codes.shape[0] + 1, dtype=np.uint64)
        np.cumsum(codes * down[: codes.shape[0]], dtype=np.uint64, out=prefix[1:])
        return (prefix[window:] - prefix[:n]) * up[window - 1 : window - 1 + n]


class ChunkIndex:
    def __init__(self, window: int = 32) -> None:
        self.window = window
        self._texts_by_anchor: dict[int, set[str]] = defaultdict(set)
        self._filter = np.zeros(1 << _FILTER_BITS, dtype=bool)  # what adds and removes maintain
        self._packed: np.ndarray | None = None  # the filter 8 bits a byte, as `find` reads it (None: stale)
        self._dirty = False

    def __len__(self) -> int:
        return sum(len(t) for t in self._texts_by_anchor.values())

    def __contains__(self, text: str) -> bool:
        return len(text) >= self.window and text in self._texts_by_anchor.get(self._anchor(text), ())

    def _anchor(self, text: str) -> int:
        return int(_window_hashes(_codes(text[: self.window]), self.window)[0])

    def add(self, text: str) -> bool:
        """Index a (stripped) chunk text; False if it is too short to detect reliably."""
        if len(text) < self.window:
            return False
        anchor = self._anchor(text)
        self._texts_by_anchor[anchor].add(text)
        self._filter[np.uint64(anchor) >> _FILTER_SHIFT] = True
        self._packed = None
        return True

    def remove(self, text: str) -> None:
        if len(text) < self.window:
            return
        anchor = self._anchor(text)
        texts = self._texts_by_anchor.get(anchor)
        if texts is not None:
            texts.discard(text)
            if not texts:
                del self._texts_by_anchor[anchor]
            self._dirty = True

    def find(self, prompt: str, allowed: Callable[[str], bool] | None = None) -> list[Match]:
        """Non-overlapping occurrences of indexed texts, left to right; the longest wins at one offset.
        allowed: only texts it accepts count (another tenant's chunk neither matches nor hides one)."""
        if not self._texts_by_anchor or len(prompt) < self.window:
            return []
        if self._dirty:  # removals leave stale bits; rebuild lazily
            self._filter[:] = False
            self._filter[np.array(list(self._texts_by_anchor), dtype=np.uint64) >> _FILTER_SHIFT] = True
            self._dirty, self._packed = False, None
        packed = self._packed
        if packed is None:
            packed = self._packed = np.packbits(self._filter, bitorder="little")
        hashes = _rolling_hashes(_codes(prompt), self.window)
        candidates = np.nonzero(_bits_set(packed, hashes >> _FILTER_SHIFT))[0]
        matches: list[Match] = []
        next_free = 0
        for offset in candidates.tolist():
            texts = self._texts_by_anchor.get(int(hashes[offset])) if offset >= next_free else None
            if not texts:
                continue
            found = [t for t in texts if prompt.startswith(t, offset) and (allowed is None or allowed(t))]
            if found:
                text = max(found, key=len)
                matches.append(Match(offset, offset + len(text), text))
                next_free = offset + len(text)
        return matches


def _bits_set(packed: np.ndarray, index: np.ndarray) -> np.ndarray:
    """packed (np.packbits, little bit order) at each of `index`: nonzero where the bit is set."""
    return packed[index >> np.uint64(3)] & (np.uint8(1) << (index & np.uint64(7)).astype(np.uint8))
