"""FusionEngine: wiring only. A prompt is prepared on the caller's thread (fusion/layout.py), the step loop
(serving/) schedules it, the executor (runtime/) computes it, the chunk registry (store/) keeps the KV and
the fidelity monitor (fidelity/) measures sampled answers. docs/design.md follows one request through."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence

import torch

from .config import EngineConfig
from .errors import ChunkNotFoundError
from .fidelity.monitor import FidelityMonitor, FidelityReport
from .fusion.layout import PromptLayout, shared_prefix_ids, store_namespace
from .fusion.placement import FusionContext
from .fusion.probe import CriticalLayers
from .fusion.prompt import Prompt
from .fusion.selectors import SelectorFactory
from .inputs import check_choices, check_length, check_precompute, check_salt, check_texts
from .model.loader import LoadedModel, load_aux_model, load_model, resolve_device, resolve_dtype
from .outputs import EngineStatus, Generation, IngestReport
from .runtime.chunk_compute import ChunkCompute
from .runtime.decode import Prefill
from .runtime.executor import StepExecutor, prepare
from .runtime.runner import ModelRunner
from .runtime.state import Request, SequenceStream
from .serving.loop import StepLoop
from .serving.scheduler import Limits, Scheduler
from .store.chunk_kv import tenant_of
from .store.registry import ChunkRegistry


class FusionEngine:
    """One model, one tokenizer, one chunk-KV store, one step loop serving every caller's requests."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.loaded, self.model, self.tokenizer = loaded, loaded.model, loaded.tokenizer
        self._lock = threading.RLock()  # held by the loop for a step; by the inspection calls while they run
        self.counters: Counter[str] = Counter()  # chunks computed / learned, across calls
        self.prefix_ids = shared_prefix_ids(self.tokenizer, config.chunk_prefix)
        fingerprints = (loaded.model_fingerprint, loaded.tokenizer_fingerprint)
        namespace = store_namespace(fingerprints, self.prefix_ids, config.kv_format)
        self.chunks = ChunkRegistry.from_config(config, namespace, loaded.model_fingerprint, self.device)
        learning = (self.chunks, config.learn_min_chars, config.kv_format, config.learn_chunks)
        self.layout = PromptLayout(self.tokenizer, fingerprints, self.prefix_ids, self.context_window, *learning)
        self.critical_layers = CriticalLayers(config.cache_dir / "profiles.json" if config.persist else None)
        self.runner = ModelRunner(loaded, config, self.critical_layers)
        load_aux = lambda source: load_aux_model(source, loaded, config.model_cache_dir).model  # noqa: E731
        self.selectors = SelectorFactory(config.fusion, self.critical_layers, loaded.model_fingerprint, load_aux)
        self.fidelity = FidelityMonitor.of(config, loaded.name)
        compute = ChunkCompute(self.runner, self.chunks, self.prefix_ids, self.counters)
        self.executor = StepExecutor(self.layout, self.runner, compute, self.selectors, self.counters, self.fidelity)
        self.scheduler = Scheduler(Limits.of(config, self.runner))
        self.loop = StepLoop(self.scheduler, self.executor, self._lock)

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
        config: EngineConfig | None = None,
    ) -> FusionEngine:  # fmt: skip
        """model: a local HF directory (safetensors), a .gguf file, or a hub id already in the local HF cache."""
        config, dev = config or EngineConfig(), resolve_device(device)
        return cls(load_model(model, dev, resolve_dtype(dtype, dev), config.model_cache_dir), config)

    model_name = property(lambda self: self.loaded.name)
    context_window = property(lambda self: min(self.model.config.context_window, self.config.max_model_len or 1 << 62))
    device = property(lambda self: self.model.device)
    stop = property(lambda self: self.loop.stop)  # stop(timeout, drain): no more work; serving/loop.py says how

    def status(self) -> EngineStatus:
        loop, s, store = self.loop, self.scheduler, self.chunks.event_counts()
        error = None if loop.healthy else f"the step loop stopped: {loop.failure!r}"
        return EngineStatus(loop.healthy, error, s.queued, len(s.running), len(loop.crashes), store)

    # -- the chunk store -------------------------------------------------------------------------

    def precompute(self, texts: Sequence[str], context=None, neighbors=None, show_progress=None, cache_salt=None):
        """Compute and store each text's KV (stripped), idempotently; return their keys. Standalone by default;
        neighbors (per text) / context (for all): texts computed before it (FusionRAG's similarity-guided
        preprocessing). cache_salt: that salt's space (FusionParams.cache_salt)."""
        return self.ingest(texts, context, neighbors, show_progress, cache_salt).keys

    def ingest(self, texts: Sequence[str], context=None, neighbors=None, show_progress=None, cache_salt=None):
        """`precompute`, reporting what happened (IngestReport); the KV is computed on the loop, a batch a step."""
        texts, contexts = check_precompute(texts, context, neighbors, show_progress)
        jobs = self.layout.jobs(texts, contexts, tenant_of(check_salt(cache_salt)))
        todo = list({j.key: j for j in jobs if not self.chunks.holds(j.key)}.values())
        if todo:
            self.loop.submit_chore(self.executor.chunk_compute.ingest_steps(todo, show_progress)).wait()
        self.chunks.flush()  # persisted and catalogued when it returns (the writes overlapped the compute)
        keys, unique = [job.key for job in jobs], list({job.key: None for job in jobs})
        return IngestReport(keys, len(todo), len(unique) - len(todo), self.chunks.stored(unique))

    def forget(self, keys: Sequence[str], cache_salt: str | None = None) -> int:
        """Remove these entries from every tier, the disk and the index; how many were known (cache_salt: that
        space's only; None: any)."""
        tenant = None if cache_salt is None else tenant_of(check_salt(cache_salt))
        with self._lock:
            return len(self.chunks.forget(check_texts(keys, "keys"), tenant))

    def keys_for(self, texts: Sequence[str], cache_salt: str | None = None) -> list[str]:
        """Every stored key (standalone, context-aware) of these texts in the salt's space: what stores forget."""
        return self.chunks.keys_of(check_texts(texts, "texts"), tenant_of(check_salt(cache_salt)))

    # -- generation ----------------------------------------------------------------------------

    def generate(self, prompt: Prompt, **settings) -> Generation:
        """Generate a completion; same arguments as `stream`. The prompt is never echoed."""
        return Generation.from_pieces(list(self.stream(prompt, **settings)))

    def stream(self, prompt: Prompt, **settings) -> SequenceStream:
        """Text pieces as they are decoded; the last carries finish_reason, usage and stats. prompt: a string
        (used as is) or chat messages (the chat template renders them). settings: `sampling=SamplingParams()`,
        `fusion=FusionParams()`, `tools=[...]` and/or their fields as keywords (request.py). Every thread's
        requests are served together by the step loop; closing a stream cancels its request."""
        return self.stream_choices(prompt, 1, **settings)[0]

    def stream_choices(self, prompt: Prompt, n: int, **settings) -> list[SequenceStream]:
        """n answers to one prompt (OpenAI's n), one stream each: one prefill, its cache copied for each
        answer; a given seed moves by the answer's index (Request.choice). Settings as in `stream`."""
        request = Request.build(prompt, **settings)
        self.executor.check(request)  # an unknown selector or a bad grammar fails here, not in the loop
        request.draft = prepare(self.layout, request)  # here: a long prompt never holds the loop
        request.shadow = self.fidelity.capture()  # sampled: measured against full attention after it answers
        return self.loop.submit_choices(request, [request.choice(i) for i in range(1, check_choices(n))])

    def fidelity_report(self) -> FidelityReport:
        """How far fused answers drifted from full attention, per configuration (fidelity_sample_rate)."""
        return self.fidelity.report()

    # -- inspection: the evaluation harness reads the first-token distribution and the fused cache --

    def prefill(self, prompt: Prompt, **settings) -> Prefill:
        """Process the prompt (fusing cached chunks) without sampling; `stream`'s settings (the cache has
        room for max_new_tokens more, default 1: pass what `decode` will generate)."""
        request = Request.build(prompt, **{"max_new_tokens": 1, **settings})
        with self._lock:
            return self.executor.prefill_now(request)

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
        request = Request.build(prompt, tools=tools, chunks=chunks, learn_chunks=False)
        with self._lock:
            layout = self.executor.layout_of(request)
            if not layout.chunks:
                raise ChunkNotFoundError("the prompt contains no precomputed chunk")
            return self.runner.fusion_context(layout)
