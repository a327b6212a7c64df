"""Decoding: from a prefilled cache to streamed text, with stop strings and finish reasons."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import ContextLengthError
from ..model.attention import KVCache
from ..outputs import GenerationChunk, GenerationStats, Usage
from ..request import SamplingParams
from .decode_step import DecodeStep
from .sampling import Sampler, TextStream


@dataclass
class Prefill:
    """The state after the prompt: next-token logits, the filled KV cache, and what fusion did."""

    logits: torch.Tensor  # [V] float32
    token_ids: list[int]
    cache: KVCache
    stats: GenerationStats
    selected: torch.Tensor | None = None  # recomputed chunk positions (None without fusion)


def decode_loop(
    device: torch.device,
    tokenizer,
    eos: frozenset[int],
    pre: Prefill,
    params: SamplingParams,
    t_start: float,
    decode_step: DecodeStep,
) -> Iterator[GenerationChunk]:
    """Sample the first token from the prefill's logits, then decode step by step until EOS, a stop
    string or max_new_tokens; text pieces never contain (part of) a stop string."""
    prompt_ids, stats, cache = pre.token_ids, pre.stats, pre.cache
    if cache.capacity < len(prompt_ids) + params.max_new_tokens:
        raise ContextLengthError(
            f"this prefill has room for {cache.capacity - len(prompt_ids)} new tokens, "
            f"not {params.max_new_tokens}: pass max_new_tokens to prefill()"
        )
    sampler = Sampler(params, device)
    token = sampler(pre.logits)
    t_first = time.perf_counter()
    stats.ttft_ms = (t_first - t_start) * 1e3

    stream = TextStream(tokenizer, params.stop)
    pos, generated, finish = len(prompt_ids), [], "length"
    while True:
        if token in eos:
            finish = "stop"
            break
        generated.append(token)
        delta = stream.push(token)
        if stream.stopped or len(generated) >= params.max_new_tokens:
            finish = "stop" if stream.stopped else "length"
            delta += "" if stream.stopped else stream.flush()
            if delta:
                yield GenerationChunk(delta, [token])
            break
        yield GenerationChunk(delta, [token])
        token = sampler(decode_step(token, pos))
        pos += 1
    if finish == "stop" and not stream.stopped:
        tail = stream.flush()
        if tail:
            yield GenerationChunk(tail, [])
    stats.decode_ms = (time.perf_counter() - t_first) * 1e3
    usage = Usage(len(prompt_ids), len(generated), stats.tokens_reused + stats.prefix_tokens_reused)
    yield GenerationChunk("", [], finish, usage, stats)
