"""How far a fused answer is from full attention's, in the three figures the project reports:
first-token KL(full || fused), first-token top-1 agreement, and teacher-forced agreement (the share
of the returned tokens that full attention, fed the same tokens before each, would also have picked).

Teacher forcing judges the answer actually returned, one position at a time: a greedy re-generation
with full attention would count every token after a first difference as wrong, however close."""

from __future__ import annotations

import torch


def kl_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(P_reference || P) of the next-token distributions, in nats (float64)."""
    p = torch.log_softmax(reference_logits.double(), dim=-1)
    q = torch.log_softmax(logits.double(), dim=-1)
    return float((p.exp() * (p - q)).sum())


def top1_agreement(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    return float(int(reference_logits.argmax()) == int(logits.argmax()))


def teacher_forced_agreement(reference_logits: torch.Tensor, tokens: list[int]) -> float:
    """Share of `tokens` equal to the reference's argmax at their position. reference_logits [T, V]: row i is
    the reference model's distribution for tokens[i], given the prompt and tokens[:i]."""
    if not tokens:
        raise ValueError("teacher forcing needs at least one returned token")
    if reference_logits.shape[0] != len(tokens):
        raise ValueError(f"{reference_logits.shape[0]} rows of logits for {len(tokens)} tokens")
    picked = reference_logits.argmax(dim=-1).cpu()
    return float((picked == torch.tensor(tokens)).double().mean())
