"""The token sampler, and streaming detokenisation with stop strings."""

from __future__ import annotations

import torch

from ..model.config import Tokenizer
from ..outputs import TokenLogprob
from ..request import SamplingParams
from .penalties import Penalties


def token_logprob(logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
    """`token`'s log-probability under softmax(logits) and the k likeliest tokens' (raw logits: before
    temperature, penalties and masks)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logprobs, min(k, logprobs.numel())) if k else None
    pairs = tuple(zip(top.indices.tolist(), top.values.tolist())) if top is not None else ()
    return TokenLogprob(token, float(logprobs[token]), pairs)


class Sampler:
    """Greedy, or temperature / top-k / top-p / min-p sampling from a seeded generator.

    Numerically safe for every valid setting: the logits are shifted so their maximum is 0 before
    they are divided by the temperature (in float64, so no temperature > 0 overflows them and the
    likeliest token always keeps probability > 0), and top-p keeps the likeliest token whatever p is.
    Non-finite logits (a model fault) are never sampled from: NaN counts as -inf."""

    def __init__(self, params: SamplingParams, device: torch.device, prompt_ids: list[int] | None = None) -> None:
        self.params = params
        self.penalties = Penalties(params, prompt_ids or [], device) if Penalties.active(params) else None
        self.generator = None
        if params.temperature > 0:
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                self.generator.manual_seed(params.seed % (1 << 64))  # negative seeds too, as torch's own
            else:
                self.generator.seed()

    def __call__(self, logits: torch.Tensor) -> int:
        """logits: [V] float32 -> token id (repetition penalties applied first, when set)."""
        if self.penalties is None:
            return self._sample(logits)
        token = self._sample(self.penalties.apply(logits))
        self.penalties.accept(token)
        return token

    def _sample(self, logits: torch.Tensor) -> int:
        p = self.params
        inf = float("inf")  # nan_to_num would otherwise turn -inf into the lowest finite float: a sampleable token
        logits = torch.nan_to_num(logits.float(), nan=-inf, posinf=inf, neginf=-inf)
        if p.temperature == 0:
            return int(torch.argmax(logits))
        if p.top_k:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        top = logits.max()
        if not torch.isfinite(top):  # every logit -inf (or +inf present): no distribution to sample
            return int(torch.argmax(logits))
        scaled = (logits.double() - top.double()) / p.temperature  # <= 0, the maximum exactly 0
        probs = torch.softmax(scaled, dim=-1)
        if p.min_p > 0:  # the likeliest token has probability max(probs): it always stays
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # drop a token when the mass before it already reaches top_p (the first always stays)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            drop = before >= p.top_p
            drop[0] = False
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
        return int(torch.multinomial(probs, 1, generator=self.generator))


class TextStream:
    """Turns generated ids into text deltas that never include (part of) a stop string.

    The whole id list is decoded each step (cheap at generation lengths) so multi-byte
    characters and tokenizer-specific spacing come out exactly as a final decode would.
    Text that could still grow into a stop string is held back until it cannot.
    """

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""  # everything emitted so far
        self.stopped = False

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        cut = self._stop_index(full)
        if cut is not None:
            self.stopped = True
            return self._emit(full[:cut])
        return self._emit(full[: len(full) - self._held_back(full)])

    def flush(self) -> str:
        """At the end of generation: emit whatever was held back."""
        if self.stopped:
            return ""
        return self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _emit(self, upto: str) -> str:
        if len(upto) <= len(self.text) or not upto.startswith(self.text):
            return ""
        delta, self.text = upto[len(self.text) :], upto
        return delta

    def _stop_index(self, full: str) -> int | None:
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (full.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self, full: str) -> int:
        """Length of the longest suffix of `full` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(full)), best, -1):
                if full.endswith(s[:n]):
                    best = n
                    break
        return best
