"""What generate() and stream() return."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class FidelitySample:
    """One fused request measured against full attention."""

    kl: float  # first token: KL(full || fused), nats
    top1: float  # first token: 1.0 when full attention's likeliest token is the fused one's
    agreement: float  # teacher-forced: share of returned tokens full attention would also have picked
    tokens: int  # returned tokens judged
    selector: str
    ratio: float
    recompute_share: float  # chunk tokens recomputed / chunk tokens
    kv_format: str
    precompute: str  # how its chunks' KV was computed: standalone, similar (after neighbours) or mixed
    model: str
    time: float = field(default_factory=time.time)
    signals: dict[str, float] = field(default_factory=dict)  # the guard's signals (signals.py)
    score: float | None = None  # the guard's P(diverged); None when no guard looked
    weight: float = 1.0  # 1 / its chance of being measured, once sampled (the engine measures every one: 1)
    escalated: bool = False  # the guard escalated it: full attention answered, the fused prefill was judged on that

    @property
    def group(self) -> tuple[str, str, float, str, str]:
        return (self.model, self.selector, self.ratio, self.kv_format, self.precompute)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused (chunk tokens kept + cached prefix), not recomputed

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {**asdict(self), "total_tokens": self.total_tokens}


@dataclass
class GenerationStats:
    """Timing and reuse of one request, surfaced by every adapter so users can see reuse happen."""

    ttft_ms: float = 0.0  # call start -> first token sampled (tokenising, fusion and prefill included)
    prefill_ms: float = 0.0  # model work for the prompt (fusion, selection and recompute included)
    decode_ms: float = 0.0  # first token -> last token
    chunks_found: int = 0  # cached or given chunks located in the prompt
    chunks_reused: int = 0  # of those, KV loaded from the store and (at least partly) kept
    chunks_hot: int = 0  # of the reused, served by a memory tier (GPU / CPU), not read from disk or Redis
    chunks_computed: int = 0  # of those, KV computed during this call (missing from the store; then stored)
    chunks_recomputed: int = 0  # of those, every token recomputed (selector "full"): no cached KV kept
    tokens_reused: int = 0  # chunk tokens whose cached KV was kept
    tokens_recomputed: int = 0  # chunk tokens recomputed by selection
    prefix_tokens_reused: int = 0  # prompt tokens before the first chunk served by the prefix cache (exact)
    selector: str | None = None
    recompute_ratio: float | None = None
    # measured against full attention (EngineConfig.fidelity_sample_rate): None unless this request was
    # sampled; set in place when its shadow finishes, which is after the answer (read it from the report)
    fidelity: FidelitySample | None = None
    guard_score: float | None = None  # the fidelity guard's P(diverged) for this request (fidelity='guarded')
    escalated: bool = False  # the guard had it prefilled again in full: the answer is full attention's

    # Each stage of a request's path reports what it did through one of these, so every field has one
    # writer, named here: the layout, the finished prefill, the guard, the first token, the last token,
    # the fidelity shadow.

    def count_chunks(self, found: int, computed: int, hot: int) -> None:
        """The prompt's layout: chunks located, of those computed now, and served by a memory tier."""
        self.chunks_found += found
        self.chunks_computed += computed
        self.chunks_hot += hot

    def count_fusion(
        self,
        selector: str,
        ratio: float,
        prefix_tokens: int,
        chunk_tokens: int,
        recomputed: int,
        chunks_recomputed: int,
        chunks_reused: int,
    ) -> None:
        """What the fused prefill kept and recomputed (a prompt with chunks)."""
        self.selector, self.recompute_ratio, self.prefix_tokens_reused = selector, ratio, prefix_tokens
        self.tokens_recomputed, self.tokens_reused = recomputed, chunk_tokens - recomputed
        self.chunks_recomputed += chunks_recomputed
        self.chunks_reused += chunks_reused

    def prefill_done(self, prefill_s: float, since_start_s: float) -> None:
        """The prompt's model work and the time to its logits (the first token's sampling adds to it)."""
        self.prefill_ms, self.ttft_ms = prefill_s * 1e3, since_start_s * 1e3

    def guard_decided(self, score: float, escalated: bool) -> None:
        self.guard_score = score
        self.escalated = self.escalated or escalated

    def first_token(self, since_start_s: float) -> None:
        self.ttft_ms = since_start_s * 1e3

    def decode_done(self, since_first_s: float) -> None:
        self.decode_ms = since_first_s * 1e3

    def measured(self, sample: FidelitySample) -> None:
        """The fidelity shadow's figures (after the answer, for most requests)."""
        self.fidelity = sample

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model's raw next-token distribution (before
    temperature, penalties and grammar masks, as vLLM and OpenAI report it), with the `top` likeliest
    (token id, log-probability) pairs, most likely first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage
    stats: GenerationStats
    logprobs: list[TokenLogprob] | None = None  # one per token id, when SamplingParams.logprobs is set

    @classmethod
    def from_pieces(cls, pieces: list[GenerationChunk]) -> Generation:
        """A whole stream joined (its last piece carries finish_reason, usage and stats)."""
        text, ids = "".join(p.text for p in pieces), [t for p in pieces for t in p.token_ids]
        logprobs = [lp for p in pieces for lp in p.logprobs] if any(p.logprobs for p in pieces) else None
        last = pieces[-1]
        assert last.finish_reason is not None and last.usage is not None and last.stats is not None, "unfinished"
        return cls(text, ids, last.finish_reason, last.usage, last.stats, logprobs)


@dataclass
class GenerationChunk:
    """One streamed piece. The last one has finish_reason, usage and stats set."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    stats: GenerationStats | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token id (SamplingParams.logprobs)


@dataclass(frozen=True)
class EngineStatus:
    """What a server's health check and metrics read of an engine (FusionEngine.status())."""

    healthy: bool  # False once the step loop stopped after repeated failures: restart the process
    error: str | None = None  # why it is not healthy
    queued: int = 0  # requests submitted, not yet admitted
    running: int = 0  # requests being decoded
    step_failures: int = 0  # steps that failed in the last minute (their requests got EngineUnavailableError)
    store: dict[str, int] = field(default_factory=dict)  # the chunk store's counters: hits per tier, misses,
    # corrupt entries, failed writes, catalog rebuilds, entries written back (since the engine started)


@dataclass(frozen=True)
class IngestReport:
    """What FusionEngine.ingest did: the keys (one per text, in order) and, over distinct keys, how many
    were computed now, already cached, and are stored durably (in the backend; in memory without one):
    fewer stored than distinct keys means failed writes (a full disk, Redis away)."""

    keys: list[str]
    computed: int
    cached: int
    stored: int
