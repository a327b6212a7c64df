"""Fetch or recompute: a chunk held only by a slow backend (one Redis over TCP, a cold disk) can take
longer to read than to compute again. Both rates are measured as the engine runs (running averages of
its own backend reads and chunk computes), and a standalone chunk whose read would take longer than its
compute is computed instead (kept in memory; the backend's copy stays where it is). Until both rates
are measured, chunks are read."""

from __future__ import annotations

EMA = 0.3  # weight of the newest measurement


class FetchCost:
    def __init__(self) -> None:
        self.read_bytes_per_s: float | None = None  # the backend's reads
        self.bytes_per_token: float | None = None  # an entry's size per token in the stored format
        self.compute_tokens_per_s: float | None = None  # chunk precompute on the model

    def read(self, nbytes: int, tokens: int, seconds: float) -> None:
        if nbytes and seconds > 0:
            self.read_bytes_per_s = _ema(self.read_bytes_per_s, nbytes / seconds)
        if tokens:
            self.bytes_per_token = _ema(self.bytes_per_token, nbytes / tokens)

    def computed(self, tokens: int, seconds: float) -> None:
        if tokens and seconds > 0:
            self.compute_tokens_per_s = _ema(self.compute_tokens_per_s, tokens / seconds)

    def compute_is_faster(self, tokens: int) -> bool:
        read, size, compute = self.read_bytes_per_s, self.bytes_per_token, self.compute_tokens_per_s
        if read is None or size is None or compute is None:
            return False
        return tokens * size / read > tokens / compute


def _ema(old: float | None, new: float) -> float:
    return new if old is None else (1 - EMA) * old + EMA * new
