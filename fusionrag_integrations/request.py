"""A request's settings: how to sample (`SamplingParams`) and how to fuse (`FusionParams`).

They validate on construction, so a bad argument fails before any compute; the framework adapters build
them from their own fields (integrations/common.py) instead of passing a dozen keyword arguments along.
The request in flight that carries them is runtime/state.py's `Request`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from .errors import InvalidArgumentError, InvalidSamplingError
from .inputs import check_logit_bias, check_ratio, check_stop, check_texts
from .response_format import ResponseFormat, as_response_format


class Selector(Protocol):
    """A selector object (fusion/selector_base.py) passed instead of a registered name."""

    name: str


@dataclass(frozen=True)
class SamplingParams:
    """Validated on construction, so a bad argument fails before any compute."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    presence_penalty: float = 0.0  # OpenAI's, in [-2, 2]: runtime/penalties.py
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # vLLM's and transformers': 1 = off
    min_p: float = 0.0  # drop tokens less likely than min_p x the likeliest (after temperature); 0 = off
    logit_bias: tuple[tuple[int, float], ...] = ()  # OpenAI's: (token id, bias in [-100, 100]) added to logits
    # the answer must parse as this (a ResponseFormat, OpenAI's response_format dict or a pydantic class)
    response_format: ResponseFormat | None = None
    logprobs: int | None = None  # None: off; k in [0, 20]: each token's log-probability and the k likeliest

    def __post_init__(self) -> None:
        def bad(msg: str) -> InvalidSamplingError:
            return InvalidSamplingError(msg)

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise bad(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if (
            not isinstance(self.temperature, (int, float))
            or not math.isfinite(self.temperature)
            or self.temperature < 0
        ):
            raise bad(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not -(1 << 63) <= self.seed < 1 << 64
        ):
            raise bad(f"seed must be an integer in [-2**63, 2**64) or None, got {self.seed!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -2.0 <= value <= 2.0:
                raise bad(f"{name} must be a number in [-2, 2] (0 = off), got {value!r}")
        r = self.repetition_penalty
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r <= 10.0:
            raise bad(f"repetition_penalty must be a number in (0, 10] (1 = off), got {r!r}")
        if not isinstance(self.min_p, (int, float)) or isinstance(self.min_p, bool) or not 0.0 <= self.min_p <= 1.0:
            raise bad(f"min_p must be a number in [0, 1] (0 = off), got {self.min_p!r}")
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20
        ):
            raise bad(f"logprobs must be None or an integer in [0, 20] (the top alternatives), got {self.logprobs!r}")
        object.__setattr__(self, "stop", check_stop(self.stop))
        object.__setattr__(self, "logit_bias", check_logit_bias(self.logit_bias))
        object.__setattr__(self, "response_format", as_response_format(self.response_format))


@dataclass(frozen=True)
class FusionParams:
    """How cached chunks enter this request; None fields take EngineConfig's defaults.

    chunks: None = detect every precomputed chunk inside the prompt; a list = these texts (computed
    now if not cached) must occur in the prompt; [] = no fusion (plain prefill).
    selector / recompute_ratio: which chunk tokens to recompute.
    learn_chunks: keep the KV of this prompt's long paragraphs for later prompts.
    cache_salt: chunks are used, learned and computed only within this salt's space (vLLM's name for
    its prefix cache's isolation): a client cannot tell whether another one's text is cached.
    fidelity: "guarded" = prefill again in full when the fused prefill's signals predict divergence
    from full attention (fidelity/guard.py); "off" = never; None = FusionConfig.fidelity.
    """

    chunks: tuple[str, ...] | None = None
    selector: str | Selector | None = None
    recompute_ratio: float | None = None
    learn_chunks: bool | None = None
    cache_salt: str | None = None
    fidelity: str | None = None

    def __post_init__(self) -> None:
        if self.chunks is not None:
            object.__setattr__(self, "chunks", tuple(check_texts(self.chunks, "chunks")))
        if self.recompute_ratio is not None:
            object.__setattr__(self, "recompute_ratio", check_ratio(self.recompute_ratio))
        if self.learn_chunks is not None and not isinstance(self.learn_chunks, bool):
            raise InvalidArgumentError(f"learn_chunks must be True, False or None, got {self.learn_chunks!r}")
        if self.cache_salt is not None and not isinstance(self.cache_salt, str):
            raise InvalidArgumentError(f"cache_salt must be a string or None, got {type(self.cache_salt).__name__}")
        if self.fidelity not in (None, "off", "guarded"):
            raise InvalidArgumentError(f"fidelity must be 'off', 'guarded' or None, got {self.fidelity!r}")


SAMPLING_FIELDS = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_p",
    "logit_bias",
    "response_format",
    "logprobs",
)
FUSION_FIELDS = ("chunks", "selector", "recompute_ratio", "learn_chunks", "cache_salt", "fidelity")
