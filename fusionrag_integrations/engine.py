"""FusionEngine: wiring only. A Request goes through the layout step (fusion/layout.py), then the
ModelRunner (runtime/runner.py) prefills and decodes it; the chunk registry (store/) keeps the KV."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import torch

from .config import EngineConfig
from .errors import ChunkNotFoundError
from .fusion.layout import PromptLayout, shared_prefix_ids, store_namespace
from .fusion.placement import FusionContext
from .fusion.probe import CriticalLayers
from .fusion.prompt import Prompt
from .fusion.selectors import Selector, SelectorFactory
from .inputs import check_length, check_precompute, check_salt, check_texts
from .model.loader import LoadedModel, load_aux_model, load_model, resolve_device, resolve_dtype
from .outputs import EngineStatus, Generation, GenerationChunk, IngestReport
from .request import Request
from .runtime.decode import DecodeState, Prefill
from .runtime.pacing import Pacing
from .runtime.precompute import PrecomputeJob
from .runtime.runner import ModelRunner
from .runtime.stepwise import StepwiseStream
from .serving.scheduler import Limits, Scheduler
from .store.chunk_kv import ChunkKV, tenant_of
from .store.ingest import ingest
from .store.registry import ChunkRegistry


class FusionEngine:
    """One model, one tokenizer, one chunk-KV store. Requests take turns step by step (a lock held for
    one prefill or one decode token at a time, never while a stream waits for its reader)."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.loaded, self.model, self.tokenizer = loaded, loaded.model, loaded.tokenizer
        self._lock = threading.RLock()
        self.counters: Counter[str] = Counter()  # chunks computed / learned, across calls
        self.prefix_ids = shared_prefix_ids(self.tokenizer, config.chunk_prefix)
        fingerprints = (loaded.model_fingerprint, loaded.tokenizer_fingerprint)
        namespace = store_namespace(fingerprints, self.prefix_ids, config.kv_format)
        self.chunks = ChunkRegistry.from_config(config, namespace, loaded.model_fingerprint, self.device)
        self.layout = PromptLayout(
            self.tokenizer, fingerprints, self.prefix_ids, self.context_window, self.chunks, config.learn_min_chars,
            config.kv_format,
        )  # fmt: skip
        self.critical_layers = CriticalLayers(config.cache_dir / "profiles.json" if config.persist else None)
        self.runner = ModelRunner(loaded, config, self.critical_layers)
        load_aux = lambda source: load_aux_model(source, loaded, config.model_cache_dir).model  # noqa: E731
        self.selectors = SelectorFactory(config.fusion, self.critical_layers, loaded.model_fingerprint, load_aux)
        budget = self.runner.kv_token_budget(config.running_kv_bytes)
        running = config.max_running_requests or (64 if self.device.type == "cuda" else 8)
        piece = config.max_prefill_tokens or (8192 if self.device.type == "cuda" else 256)
        limits = Limits(running, budget, piece, self.runner.memory_fits, self.runner.sync)
        self.scheduler = Scheduler(self._lock, self.runner.decode_batch, limits) if running > 1 else None

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
        config: EngineConfig | None = None,
    ) -> FusionEngine:  # fmt: skip
        """model: a local HF directory (safetensors), a .gguf file, or a hub id already in the local HF cache."""
        config, dev = config or EngineConfig(), resolve_device(device)
        return cls(load_model(model, dev, resolve_dtype(dtype, dev), config.model_cache_dir), config)

    def status(self) -> EngineStatus:
        s = self.scheduler
        if s is None:
            return EngineStatus(True, store=self.chunks.event_counts())
        error = None if s.healthy else f"the step loop stopped: {s.failure!r}"
        return EngineStatus(s.healthy, error, s.queued, len(s.running), len(s.crashes), self.chunks.event_counts())

    model_name = property(lambda self: self.loaded.name)
    context_window = property(lambda self: self.model.config.context_window)
    device = property(lambda self: self.model.device)

    def precompute(
        self, texts: Sequence[str], context: Sequence[str] | None = None,
        neighbors: Sequence[Sequence[str]] | None = None, show_progress: bool | None = None,
        cache_salt: str | None = None,
    ) -> list[str]:  # fmt: skip
        """Compute and store the KV of each text (stripped), idempotently; return their keys. Standalone by
        default; neighbors (per text) / context (for all): texts computed before it (FusionRAG's similarity-
        guided preprocessing), named by its key's context id. Progress shows for large inputs on a terminal.
        cache_salt: stored in that salt's space (FusionParams.cache_salt)."""
        return self.ingest(texts, context, neighbors, show_progress, cache_salt).keys

    def ingest(
        self, texts: Sequence[str], context: Sequence[str] | None = None,
        neighbors: Sequence[Sequence[str]] | None = None, show_progress: bool | None = None,
        cache_salt: str | None = None,
    ) -> IngestReport:  # fmt: skip
        """`precompute`, reporting what happened: computed now, already cached, and stored durably."""
        texts, contexts = check_precompute(texts, context, neighbors, show_progress)
        tenant = tenant_of(check_salt(cache_salt))
        self.chunks.sync()
        jobs = [self.layout.job(text, nbrs, tenant) for text, nbrs in zip(texts, contexts)]  # tokenised here
        todo = list({j.key: j for j in jobs if not self.chunks.holds(j.key)}.values())
        if todo:
            steps = ingest(self.runner.compute_chunks(self.prefix_ids, todo), len(todo), self._store, show_progress)
            self._run_steps(steps)
        self.chunks.flush()  # persisted and catalogued when it returns (the writes overlapped the compute)
        keys = [job.key for job in jobs]
        unique = list(dict.fromkeys(keys))
        return IngestReport(keys, len(todo), len(unique) - len(todo), self.chunks.stored(unique))

    def _run_steps(self, steps: Iterator[object]) -> None:
        """Bulk work on the step loop, a batch per step between the requests' steps (alone: under the lock)."""
        if self.scheduler is not None:
            self.scheduler.submit_chore(steps).wait()
            return
        with self._lock:
            for _ in steps:
                pass

    def _store(self, entries: list[tuple[ChunkKV, str]]) -> None:
        self.chunks.add(entries)
        self.counters["chunks_computed"] += len(entries)

    def _compute(self, jobs: list[PrecomputeJob]) -> list[ChunkKV]:
        """Compute, store and return these jobs' entries now (on the step loop: chunks a prompt lacks)."""
        batches = self.runner.compute_chunks(self.prefix_ids, jobs) if jobs else ()
        done: list[ChunkKV] = []
        for entries in ingest(batches, len(jobs), self._store, False):
            done += entries
        return done

    def forget(self, keys: Sequence[str], cache_salt: str | None = None) -> int:
        """Remove these entries from every tier, the disk and the detection index; returns how many were known.
        cache_salt: only entries of that salt's space (None: any)."""
        keys = check_texts(keys, "keys")
        tenant = None if cache_salt is None else tenant_of(check_salt(cache_salt))
        with self._lock:
            return len(self.chunks.forget(keys, tenant))

    def keys_for(self, texts: Sequence[str], cache_salt: str | None = None) -> list[str]:
        """Every stored key (standalone and context-aware) of these chunk texts in the salt's space: what
        vector stores forget on delete."""
        texts, tenant = check_texts(texts, "texts"), tenant_of(check_salt(cache_salt))
        with self._lock:
            self.chunks.sync()
            return [ref.key for text in texts for ref in self.chunks.refs_for(text.strip(), tenant)]

    # -- generation ----------------------------------------------------------------------------

    def generate(self, prompt: Prompt, **settings) -> Generation:
        """Generate a completion; same arguments as `stream`. The prompt is never echoed."""
        return Generation.from_pieces(list(self.stream(prompt, **settings)))

    def stream(self, prompt: Prompt, **settings) -> Iterator[GenerationChunk]:
        """Text pieces as they are decoded; the last piece carries finish_reason, usage and stats.

        prompt: a string (used as is) or chat messages (rendered with the tokenizer's chat template).
        settings: `sampling=SamplingParams(...)`, `fusion=FusionParams(...)`, `tools=[...]`, and/or their
        fields as keywords (max_new_tokens, temperature, top_p, top_k, seed, stop; chunks, selector,
        recompute_ratio, learn_chunks: see request.py)."""
        request = Request.build(prompt, **settings)
        selector, ratio = self.selectors(request.fusion)
        if self.scheduler is not None:
            # on the caller's thread: a long prompt never holds the loop; t_start stays the submission
            request.draft = self._prepare(request)
            share = ratio if selector.fixed_share is None else selector.fixed_share
            plan = lambda: self._lay_out(request, share)  # noqa: E731
            prefill = lambda pacing: self._decode_state(request, selector, ratio, pacing)  # noqa: E731
            return self.scheduler.submit(request, plan, prefill)
        return StepwiseStream(self._run(request, selector, ratio), self._lock)

    def _run(self, request: Request, selector: Selector, ratio: float) -> Iterator[GenerationChunk]:
        request.t_start = time.perf_counter()  # timing starts when the stream is first read
        yield from self.runner.decode(self._prefill(request, selector, ratio), request)

    def _prepare(self, request: Request):
        fusion = request.fusion
        learn = self.config.learn_chunks if fusion.learn_chunks is None else fusion.learn_chunks
        return self.layout.prepare(request.prompt, request.tools, fusion.chunks, learn, tenant_of(fusion.cache_salt))

    def _lay_out(self, request: Request, share: float = 1.0) -> tuple[int, int]:
        """Look up (or compute) the request's chunks; returns (KV positions it will need, tokens its prefill
        computes: the fresh ones and `share` of the chunk tokens)."""
        draft = request.draft if request.draft is not None else self._prepare(request)
        layout = self.layout.build(draft, request.stats, self._compute)
        request.layout, request.draft = layout, None
        n = len(layout.token_ids)
        check_length(n, request.sampling.max_new_tokens, self.context_window)
        n_chunk = sum(c.entry.num_tokens for c in layout.chunks)
        return n + request.sampling.max_new_tokens, n - n_chunk + round(share * n_chunk)

    def _decode_state(self, request: Request, selector: Selector, ratio: float, pacing: Pacing) -> DecodeState:
        return self.runner.decode_state(self._prefill(request, selector, ratio, pacing), request)

    def _prefill(self, request: Request, selector: Selector, ratio: float, pacing: Pacing | None = None) -> Prefill:
        if request.layout is None:
            self._lay_out(request)
        layout = request.layout
        pre = self.runner.prefill(request, selector, ratio, pacing)
        if layout.learnable:  # after the timing: storing is not on the path to the first token
            entries = self.layout.learned_entries(layout, pre.cache.k, pre.cache.v)
            self.chunks.add(entries)
            self.counters["chunks_learned"] += len(entries)
        request.layout = None  # its chunks' KV is in the cache now: a tier may evict and free theirs while this decodes
        return pre

    # -- inspection: the evaluation harness reads the first-token distribution and the fused cache --

    def prefill(self, prompt: Prompt, **settings) -> Prefill:
        """Process the prompt (fusing cached chunks) without sampling; `stream`'s settings (the cache has
        room for max_new_tokens more, default 1: pass what `decode` will generate)."""
        request = Request.build(prompt, **{"max_new_tokens": 1, **settings})
        with self._lock:
            return self._prefill(request, *self.selectors(request.fusion))

    def decode(self, pre: Prefill, **sampling) -> Generation:
        """Continue generating from a `prefill` result (its cache is consumed); sampling settings as in `stream`."""
        request = Request.build("", **{"max_new_tokens": 256, **sampling})
        request.t_start -= pre.stats.ttft_ms / 1e3
        check_length(len(pre.token_ids), request.sampling.max_new_tokens, self.context_window)
        with self._lock:
            return Generation.from_pieces(list(self.runner.decode(pre, request)))

    def fusion_context(self, prompt: Prompt, *, chunks: Sequence[str] | None = None, tools=None) -> FusionContext:
        """The fused cache before any recompute (chunks placed, fresh rows empty): for selectors' tests
        and profiling. Raises ChunkNotFoundError when the prompt holds no known chunk."""
        request = Request.build(prompt, tools=tools, chunks=chunks)
        draft = self.layout.prepare(prompt, tools, request.fusion.chunks, False)
        with self._lock:
            layout = self.layout.build(draft, request.stats, self._compute)
            if not layout.chunks:
                raise ChunkNotFoundError("the prompt contains no precomputed chunk")
            return self.runner.fusion_context(layout)
