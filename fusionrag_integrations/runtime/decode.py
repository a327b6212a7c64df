"""Decoding: from a prefilled cache to streamed text, with stop strings and finish reasons."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import ContextLengthError
from ..model.attention import KVCache
from ..model.config import Tokenizer
from ..outputs import FinishReason, GenerationChunk, GenerationStats, TokenLogprob, Usage
from ..request import SamplingParams
from .decode_step import DecodeStep
from .grammar import TokenConstraint, constrain
from .sampling import Sampler, TextStream, token_logprob


@dataclass
class Prefill:
    """The state after the prompt: next-token logits, the filled KV cache, and what fusion did."""

    logits: torch.Tensor  # [V] float32
    token_ids: list[int]
    cache: KVCache
    stats: GenerationStats
    selected: torch.Tensor | None = None  # recomputed chunk positions (None without fusion)


class DecodeState:
    """One request's decoding, a token at a time: whoever runs the model (one request alone, or the
    scheduler's batch) feeds it the logits for (`token`, `position`); it samples (within its grammar, when
    it has one), detokenises with stop strings, and says when it is `done`. Text pieces never contain
    (part of) a stop string."""

    def __init__(
        self,
        pre: Prefill,
        params: SamplingParams,
        tokenizer: Tokenizer,
        eos: frozenset[int],
        device: torch.device,
        t_start: float,
        constraint: TokenConstraint | None = None,
    ) -> None:
        if pre.cache.capacity < len(pre.token_ids) + params.max_new_tokens:
            raise ContextLengthError(
                f"this prefill has room for {pre.cache.capacity - len(pre.token_ids)} new tokens, "
                f"not {params.max_new_tokens}: pass max_new_tokens to prefill()"
            )
        self.pre, self.params, self.eos, self.t_start = pre, params, eos, t_start
        self.sampler = Sampler(params, device, pre.token_ids)
        self.constraint = constraint
        self.tokenizer = tokenizer
        self.generated: list[int] = []
        self.position = len(pre.token_ids)  # where `token` goes when fed back
        self.token = -1
        self.done = False
        self.t_first = 0.0
        self.step: DecodeStep | None = None  # its own step function while it decodes alone

    def start(self) -> list[GenerationChunk]:
        """Sample the first token from the prefill's logits."""
        choice = self._choose(self.pre.logits, None)
        self.t_first = time.perf_counter()
        self.pre.stats.first_token(self.t_first - self.t_start)
        self.text = TextStream(self.tokenizer, self.params.stop)
        return self._accept(*choice)

    def feed(self, logits: torch.Tensor, masked: torch.Tensor | None = None) -> list[GenerationChunk]:
        """The logits after `token` at `position`: sample the next one. masked: the same logits with this
        request's grammar mask already applied (the batched step masks every row at once)."""
        self.position += 1
        return self._accept(*self._choose(logits, masked))

    def _choose(self, logits: torch.Tensor, masked: torch.Tensor | None) -> tuple[int, TokenLogprob | None]:
        if self.constraint is not None and masked is None:
            masked = constrain(logits[None], [self.constraint])[0]
        token = self.sampler(logits if masked is None else masked)
        k = self.params.logprobs
        return token, None if k is None else token_logprob(logits, token, k)

    def _accept(self, token: int, logprob: TokenLogprob | None) -> list[GenerationChunk]:
        if token in self.eos:
            return self._finish("stop")
        if self.constraint is not None:
            self.constraint.accept(token)
        self.generated.append(token)
        lps = [logprob] if logprob is not None else []
        delta = self.text.push(token)
        complete = self.constraint is not None and self.constraint.done  # the grammar admits nothing more
        if self.text.stopped or complete or len(self.generated) >= self.params.max_new_tokens:
            delta += "" if self.text.stopped else self.text.flush()
            last = [GenerationChunk(delta, [token], logprobs=lps)] if delta or lps else []
            return last + self._finish("stop" if self.text.stopped or complete else "length")
        self.token = token
        return [GenerationChunk(delta, [token], logprobs=lps)]

    def _finish(self, reason: FinishReason) -> list[GenerationChunk]:
        pieces = []
        if reason == "stop" and not self.text.stopped and (tail := self.text.flush()):
            pieces.append(GenerationChunk(tail, []))
        stats = self.pre.stats
        stats.decode_done(time.perf_counter() - self.t_first)
        usage = Usage(len(self.pre.token_ids), len(self.generated), stats.tokens_reused + stats.prefix_tokens_reused)
        self.done = True
        return [*pieces, GenerationChunk("", [], reason, usage, stats)]


def decode_loop(state: DecodeState, decode_step: DecodeStep) -> Iterator[GenerationChunk]:
    """One request decoded alone: its own step function (eager or CUDA-graphed) until done."""
    yield from state.start()
    while not state.done:
        yield from state.feed(decode_step(state.token, state.position))
