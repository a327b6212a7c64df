"""Repetition penalties and logit bias, as OpenAI and vLLM define them, applied to one request's
next-token logits.

- frequency_penalty f, presence_penalty p (OpenAI's; over the tokens generated so far):
  logit[t] -= f * count[t] + p * (count[t] > 0)
- repetition_penalty r (CTRL's, as transformers and vLLM apply it; over the prompt and the generated
  tokens): a seen token's logit is divided by r when positive, multiplied by r when not.
- logit_bias (OpenAI's): a fixed number added to the named tokens' logits, after the penalties.

They change which token is likeliest, so they apply to greedy decoding too."""

from __future__ import annotations

import torch

from ..request import SamplingParams


class Penalties:
    def __init__(self, params: SamplingParams, prompt_ids: list[int], device: torch.device) -> None:
        self.frequency, self.presence = params.frequency_penalty, params.presence_penalty
        self.repetition = params.repetition_penalty
        self.prompt_ids, self.device = prompt_ids, device
        self.bias = params.logit_bias
        self.bias_row: torch.Tensor | None = None  # [V] logit_bias laid out once, at the first call
        self.counts: torch.Tensor | None = None  # [V] generated-token counts, made at the first call
        self.seen: torch.Tensor | None = None  # [V] prompt or generated

    @staticmethod
    def active(params: SamplingParams) -> bool:
        penalised = params.frequency_penalty != 0 or params.presence_penalty != 0 or params.repetition_penalty != 1
        return penalised or bool(params.logit_bias)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [V] (float32) -> penalised logits (a new tensor)."""
        if self.counts is None:
            vocab = logits.numel()
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=logits.device)
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
            prompt = torch.tensor([t for t in self.prompt_ids if 0 <= t < vocab], dtype=torch.long)
            self.seen[prompt.to(logits.device)] = True
            if self.bias:
                ids, values = zip(*self.bias)
                row = torch.zeros(vocab, dtype=torch.float32)
                row[list(ids)] = torch.tensor(values, dtype=torch.float32)
                self.bias_row = row.to(logits.device)
        out = logits.float().clone()
        assert self.seen is not None and self.counts is not None  # made above
        if self.repetition != 1:
            penalised = torch.where(out > 0, out / self.repetition, out * self.repetition)
            out = torch.where(self.seen, penalised, out)
        out = out - self.frequency * self.counts - self.presence * (self.counts > 0).float()
        return out if self.bias_row is None else out + self.bias_row

    def accept(self, token: int) -> None:
        if self.counts is not None and self.seen is not None and 0 <= token < self.counts.numel():
            self.counts[token] += 1
            self.seen[token] = True


def reference_penalties(
    logits: list[float], prompt: list[int], generated: list[int], params: SamplingParams
) -> list[float]:
    """The definitions above, one token at a time in plain Python (the tests' reference)."""
    out = list(logits)
    seen = set(prompt) | set(generated)
    for t in range(len(out)):
        if t in seen and params.repetition_penalty != 1:
            out[t] = out[t] / params.repetition_penalty if out[t] > 0 else out[t] * params.repetition_penalty
        count = generated.count(t)
        out[t] -= params.frequency_penalty * count + params.presence_penalty * (count > 0)
    for t, bias in params.logit_bias:
        out[t] += bias
    return out
