"""What a FusionRAGLLM response carries besides text: OpenAI-style usage and the fusion statistics in
`raw` (LlamaIndex's TokenCountingHandler reads the usage), and log-probabilities in LlamaIndex's layout."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.llms.types import LogProb

from ..outputs import GenerationChunk


def raw_of(last: GenerationChunk) -> dict[str, Any]:
    u, stats = last.usage, last.stats
    assert u is not None and stats is not None, "only the last piece carries usage and statistics"
    return {
        "usage": {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        },
        "stats": stats.to_dict(),
        "finish_reason": last.finish_reason,
    }


def logprobs_of(piece: GenerationChunk, tokenizer) -> list[list[LogProb]] | None:
    """As LlamaIndex's OpenAI LLM fills them: per token, its top alternatives (the chosen token alone when
    none were asked for)."""
    if not piece.logprobs:
        return None

    def entry(token: int, logprob: float) -> LogProb:
        text = tokenizer.decode([token])
        return LogProb(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    return [[entry(t, v) for t, v in lp.top] or [entry(lp.token_id, lp.logprob)] for lp in piece.logprobs]
