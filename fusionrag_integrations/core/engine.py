"""FusionEngine: load a model, precompute chunk KV, generate and stream. Glue only: no math here."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence

import torch

from .config import EngineConfig
from .errors import ContextLengthError, EmptyPromptError
from .loader import LoadedModel, load_model
from .model import AttentionMode
from .outputs import Generation, GenerationChunk, GenerationStats, Usage
from .prompt import Prompt, encode_text, render_prompt
from .sampling import Sampler, SamplingParams, TextStream

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on CUDA (what checkpoints ship in), float32 on CPU (exact, and CPUs lack fast bf16 GEMMs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


class FusionEngine:
    """One model, one tokenizer, one chunk-KV store. Requests run one at a time (a lock)."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.loaded = loaded
        self.model = loaded.model
        self.model.use_triton = self.config.use_triton
        self.tokenizer = loaded.tokenizer
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        config: EngineConfig | None = None,
    ) -> "FusionEngine":
        """model: a local HF directory (safetensors), a .gguf file, or a hub id already in the local HF cache."""
        config = config or EngineConfig()
        dev = resolve_device(device)
        loaded = load_model(model, dev, resolve_dtype(dtype, dev), config.cache_dir)
        return cls(loaded, config)

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def context_window(self) -> int:
        return self.model.config.context_window

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- generation --------------------------------------------------------------------

    def generate(self, prompt: Prompt, **kwargs) -> Generation:
        """Generate a completion; same arguments as `stream`. The prompt is never echoed."""
        text, ids = [], []
        for piece in self.stream(prompt, **kwargs):
            text.append(piece.text)
            ids.extend(piece.token_ids)
        return Generation("".join(text), ids, piece.finish_reason, piece.usage, piece.stats)

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        tools: Sequence[dict] | None = None,
    ) -> Iterator[GenerationChunk]:
        """Yield text pieces as they are decoded; the last piece carries finish_reason, usage and stats.

        prompt: a string (used as is) or chat messages (rendered with the tokenizer's chat template).
        """
        params = SamplingParams(max_new_tokens, temperature, top_p, top_k, seed, tuple([stop] if isinstance(stop, str) else stop or ()))
        with self._lock:
            yield from self._generate(prompt, params, tools)

    def _generate(self, prompt: Prompt, params: SamplingParams, tools) -> Iterator[GenerationChunk]:
        t_start = time.perf_counter()
        text, add_special = render_prompt(self.tokenizer, prompt, tools)
        prompt_ids = encode_text(self.tokenizer, text, add_special)
        self._check_length(len(prompt_ids), params.max_new_tokens)
        stats = GenerationStats()
        cache = self.model.new_cache(len(prompt_ids) + params.max_new_tokens)

        t_prefill = time.perf_counter()
        ids = torch.tensor(prompt_ids, device=self.device)
        positions = torch.arange(len(prompt_ids), device=self.device)
        logits = self.model.forward(ids, positions, cache, AttentionMode.CAUSAL_FROM_ZERO, len(prompt_ids) - 1)
        sampler = Sampler(params, self.device)
        token = sampler(logits[-1])  # the .item() inside synchronises the device
        t_first = time.perf_counter()
        stats.prefill_ms = (t_first - t_prefill) * 1e3
        stats.ttft_ms = (t_first - t_start) * 1e3

        stream = TextStream(self.tokenizer, params.stop)
        eos = self.loaded.eos_token_ids
        pos, generated, finish = len(prompt_ids), [], "length"
        while True:
            if token in eos:
                finish = "stop"
                break
            generated.append(token)
            delta = stream.push(token)
            if stream.stopped:
                finish = "stop"
                if delta:
                    yield GenerationChunk(delta, [token])
                break
            if len(generated) >= params.max_new_tokens:
                delta += stream.flush()
                if delta:
                    yield GenerationChunk(delta, [token])
                break
            yield GenerationChunk(delta, [token])
            step = torch.tensor([token], device=self.device)
            logits = self.model.forward(step, torch.tensor([pos], device=self.device), cache, AttentionMode.DECODE, pos)
            token = sampler(logits[-1])
            pos += 1
        if finish == "stop" and not stream.stopped:
            tail = stream.flush()
            if tail:
                yield GenerationChunk(tail, [])
        stats.decode_ms = (time.perf_counter() - t_first) * 1e3
        usage = Usage(len(prompt_ids), len(generated), stats.tokens_reused)
        yield GenerationChunk("", [], finish, usage, stats)

    def _check_length(self, n_prompt: int, max_new_tokens: int) -> None:
        if n_prompt == 0:
            raise EmptyPromptError("the prompt encodes to zero tokens")
        if n_prompt + max_new_tokens > self.context_window:
            raise ContextLengthError(
                f"prompt of {n_prompt} tokens + max_new_tokens={max_new_tokens} exceeds the context window of "
                f"{self.context_window} tokens; shorten the prompt or lower max_new_tokens"
            )
