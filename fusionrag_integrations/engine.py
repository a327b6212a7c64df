"""FusionEngine: wiring only. A Request goes through the layout step (fusion/layout.py), then the
ModelRunner (runtime/runner.py) prefills and decodes it; the chunk registry (store/) keeps the KV."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .config import EngineConfig
from .errors import ChunkNotFoundError
from .fusion.layout import PromptLayout
from .fusion.placement import FusionContext
from .fusion.probe import CriticalLayers
from .fusion.prompt import Prompt, encode_text
from .fusion.selectors import Selector, make_selector
from .inputs import check_length, check_precompute, check_texts
from .lru import LRU
from .model.loader import LoadedModel, load_aux_model, load_model, resolve_device, resolve_dtype
from .model.transformer import TransformerModel
from .outputs import Generation, GenerationChunk
from .request import FusionParams, Request
from .runtime.decode import Prefill
from .runtime.precompute import PrecomputeJob
from .runtime.runner import ModelRunner
from .runtime.stepwise import StepwiseStream
from .store.chunk_kv import ChunkKV
from .store.integrity import cache_secret
from .store.registry import ChunkRegistry


class FusionEngine:
    """One model, one tokenizer, one chunk-KV store. Requests take turns step by step (a lock held for
    one prefill or one decode token at a time, never while a stream waits for its reader)."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.loaded, self.model, self.tokenizer = loaded, loaded.model, loaded.tokenizer
        self._lock = threading.RLock()
        self.counters: Counter[str] = Counter()  # chunks computed / learned, QCFuse profiles, across calls
        tok = self.tokenizer  # every chunk is computed after BOS (the attention sink) + chunk_prefix
        sink = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        prefix = encode_text(tok, config.chunk_prefix, False) if config.chunk_prefix else []
        self.prefix_ids = ([sink] if sink is not None else []) + prefix
        fingerprints = (loaded.model_fingerprint, loaded.tokenizer_fingerprint)
        namespace = hashlib.sha256(json.dumps([*fingerprints, self.prefix_ids]).encode()).hexdigest()[:16]
        directory = config.cache_dir / "kv" / namespace if config.persist else None
        self.chunks = ChunkRegistry(
            namespace, loaded.model_fingerprint, self.device, config.gpu_cache_bytes, config.cpu_cache_bytes,
            directory, config.fusion.min_chunk_chars, cache_secret(),
        )  # fmt: skip
        self.layout = PromptLayout(
            tok, fingerprints, self.prefix_ids, self.context_window, self.chunks, config.learn_min_chars
        )
        profiles = config.cache_dir / "profiles" / "critical_layers.json" if config.persist else None
        self.critical_layers = CriticalLayers(profiles)
        self.runner = ModelRunner(self.model, config, loaded.model_fingerprint, self.critical_layers)
        self._aux: LoadedModel | None = None
        self._aux_scores: LRU = LRU(max_entries=8)

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
        config: EngineConfig | None = None,
    ) -> FusionEngine:  # fmt: skip
        """model: a local HF directory (safetensors), a .gguf file, or a hub id already in the local HF cache."""
        config = config or EngineConfig()
        dev = resolve_device(device)
        return cls(load_model(model, dev, resolve_dtype(dtype, dev), config.model_cache_dir), config)

    model_name = property(lambda self: self.loaded.name)
    context_window = property(lambda self: self.model.config.context_window)
    device = property(lambda self: self.model.device)

    # -- chunk KV ------------------------------------------------------------------------------

    def chunk_token_ids(self, text: str) -> list[int]:
        return self.layout.chunk_token_ids(text)

    def precompute(
        self, texts: Sequence[str], context: Sequence[str] | None = None,
        neighbors: Sequence[Sequence[str]] | None = None, show_progress: bool | None = None,
    ) -> list[str]:  # fmt: skip
        """Compute and store the KV of each text (stripped of surrounding whitespace); return their keys.

        Idempotent: stored texts are not computed again. Standalone by default: each chunk after the
        shared prefix only. neighbors: per text, the texts placed before it at compute time (FusionRAG's
        similarity-guided preprocessing), so its KV carries their cross-attention; context: one such
        list for every text. Only the chunk's KV is stored; its key's context id names the neighbours.
        Progress is shown for large inputs on a terminal."""
        texts, contexts = check_precompute(texts, context, neighbors, show_progress)
        with self._lock:
            self.chunks.sync()
            jobs = [self.layout.job(text, nbrs) for text, nbrs in zip(texts, contexts)]
            todo = {job.key: job for job in jobs if not self.chunks.has(job.key)}
            self._compute(list(todo.values()), show_progress)
            return [job.key for job in jobs]

    def _compute(self, jobs: list[PrecomputeJob], show_progress: bool | None = False) -> list[ChunkKV]:
        """Compute, store and return these jobs' entries (in the order computed)."""
        done: list[ChunkKV] = []
        hide = (not show_progress) if show_progress is not None else (len(jobs) < 16 or None)
        with tqdm(total=len(jobs), desc="precompute", unit="chunk", disable=hide) as progress:
            for entries in self.runner.compute_chunks(self.prefix_ids, jobs) if jobs else ():
                self.chunks.add(entries)
                self.counters["chunks_computed"] += len(entries)
                progress.update(len(entries))
                done += [entry for entry, _ in entries]
        return done

    def forget(self, keys: Sequence[str]) -> int:
        """Remove these entries from every tier, the disk and the detection index; returns how many were known."""
        keys = check_texts(keys, "keys")
        with self._lock:
            return len(self.chunks.forget(keys))

    def keys_for(self, texts: Sequence[str]) -> list[str]:
        """Every stored key (standalone and context-aware) of these chunk texts: what vector stores forget on delete."""
        texts = check_texts(texts, "texts")
        with self._lock:
            self.chunks.sync()
            return [ref.key for text in texts for ref in self.chunks.refs_for(text.strip())]

    # -- generation ----------------------------------------------------------------------------

    def generate(self, prompt: Prompt, **kwargs) -> Generation:
        """Generate a completion; same arguments as `stream`. The prompt is never echoed."""
        pieces = list(self.stream(prompt, **kwargs))
        text, ids = "".join(p.text for p in pieces), [t for p in pieces for t in p.token_ids]
        return Generation(text, ids, pieces[-1].finish_reason, pieces[-1].usage, pieces[-1].stats)

    def stream(self, prompt: Prompt, **settings) -> Iterator[GenerationChunk]:
        """Text pieces as they are decoded; the last piece carries finish_reason, usage and stats.

        prompt: a string (used as is) or chat messages (rendered with the tokenizer's chat template).
        settings: `sampling=SamplingParams(...)`, `fusion=FusionParams(...)`, `tools=[...]`, and/or their
        fields as keywords: max_new_tokens, temperature, top_p, top_k, seed, stop (sampling); chunks,
        selector, recompute_ratio, learn_chunks (fusion: see FusionParams)."""
        request = Request.build(prompt, **settings)
        selector, ratio = self._selector(request.fusion)
        return StepwiseStream(self._run(request, selector, ratio), self._lock)

    def _run(self, request: Request, selector: Selector, ratio: float) -> Iterator[GenerationChunk]:
        request.t_start = time.perf_counter()  # timing starts when the stream is first read
        pre = self._prefill(request, selector, ratio)
        yield from self.runner.decode(pre, request, self.tokenizer, self.loaded.eos_token_ids)

    def _selector(self, fusion: FusionParams) -> tuple[Selector, float]:
        chosen = self.config.fusion.selector if fusion.selector is None else fusion.selector
        aux = self._aux_model() if chosen == "cacheclip" else None
        layer = self.config.fusion.critical_layer
        layer = self.critical_layers.get(self.loaded.model_fingerprint) if layer is None else layer
        selector = make_selector(chosen, self.config.fusion, layer, aux, self._aux_scores)
        ratio = self.config.fusion.recompute_ratio if fusion.recompute_ratio is None else fusion.recompute_ratio
        return selector, ratio

    def _aux_model(self) -> TransformerModel | None:
        """CacheClip's auxiliary model (FusionConfig.aux_model), loaded on first use; None: the model itself."""
        if self.config.fusion.aux_model is not None and self._aux is None:
            self._aux = load_aux_model(self.config.fusion.aux_model, self.loaded, self.config.model_cache_dir)
        return None if self._aux is None else self._aux.model

    def _prefill(self, request: Request, selector: Selector, ratio: float) -> Prefill:
        fusion = request.fusion
        learn = self.config.learn_chunks if fusion.learn_chunks is None else fusion.learn_chunks
        layout = self.layout.build(request.prompt, request.tools, fusion.chunks, learn, request.stats, self._compute)
        request.layout = layout
        check_length(len(layout.token_ids), request.sampling.max_new_tokens, self.context_window)
        pre = self.runner.prefill(request, selector, ratio)
        if layout.learnable:  # after the timing: storing is not on the path to the first token
            entries = self.layout.learned_entries(layout, pre.cache.k, pre.cache.v)
            self.chunks.add(entries)
            self.counters["chunks_learned"] += len(entries)
        return pre

    # -- inspection: the evaluation harness reads the first-token distribution and the fused cache --

    def prefill(self, prompt: Prompt, **settings) -> Prefill:
        """Process the prompt (fusing cached chunks) without sampling; `stream`'s settings."""
        request = Request.build(prompt, **settings)
        selector, ratio = self._selector(request.fusion)
        with self._lock:
            return self._prefill(request, selector, ratio)

    def decode(self, pre: Prefill, **sampling) -> Generation:
        """Continue generating from a `prefill` result (its cache is consumed); sampling settings as in `stream`."""
        request = Request.build("", **{"max_new_tokens": 256, **sampling})
        request.t_start -= pre.stats.ttft_ms / 1e3
        check_length(len(pre.token_ids), request.sampling.max_new_tokens, self.context_window)
        with self._lock:
            pieces = list(self.runner.decode(pre, request, self.tokenizer, self.loaded.eos_token_ids))
        text, ids = "".join(p.text for p in pieces), [t for p in pieces for t in p.token_ids]
        return Generation(text, ids, pieces[-1].finish_reason, pieces[-1].usage, pieces[-1].stats)

    def fusion_context(self, prompt: Prompt, *, chunks: Sequence[str] | None = None, tools=None) -> FusionContext:
        """The fused cache before any recompute (chunks placed, fresh rows empty): for selectors' tests
        and profiling. Raises ChunkNotFoundError when the prompt holds no known chunk."""
        request = Request.build(prompt, tools=tools, chunks=chunks)
        with self._lock:
            layout = self.layout.build(prompt, tools, request.fusion.chunks, False, request.stats, self._compute)
            if not layout.chunks:
                raise ChunkNotFoundError("the prompt contains no precomputed chunk")
            return self.runner.fusion_context(layout)
