"""A checkpoint's shape: what the forward, the caches and the attention kernels size themselves by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Tokenizer = Any  # a transformers PreTrainedTokenizerBase (held loosely: the library's annotations are partial)


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a checkpoint, as our forward needs it."""

    architecture: str  # HF model_type: llama | mistral | qwen2 | qwen3
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    context_window: int  # max positions we will serve (sliding window caps it: see loader)
    rope_type: str = "default"
