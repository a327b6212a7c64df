"""ModelRunner: everything that touches the model for a request (nano-vllm's split: the engine
wires, the layout step decides what the prompt is, the runner only computes).

It owns the kernel choice, the CUDA graphs, the prompt-prefix cache and the per-request KV caches;
a prefill is a task computed a slice at a time (prefill_task.py: plain, or fused: place, select,
recompute), decode is a step function over one request or a batch.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from dataclasses import replace

import torch

from ..config import EngineConfig
from ..fusion.layout import Layout
from ..fusion.placement import FusionContext, build_context, ids_on_device, place_chunks
from ..fusion.probe import CriticalLayers
from ..fusion.probe import profile_critical_layer as profile_layer
from ..fusion.selectors import Selector
from ..model.attention import KVCache, resolve_kernels
from ..model.graphs import GraphCache, graph_friendly_capacity
from ..model.loader import LoadedModel
from ..outputs import GenerationChunk
from ..store.prefix_cache import PrefixCache
from .batch_step import BatchDecodeStep
from .decode import DecodeState, Prefill, decode_loop
from .decode_step import make_decode_step
from .grammar import Grammars
from .precompute import PrecomputeJob, compute_entries, prefix_kv
from .prefill_task import PrefillTask
from .state import Request

TRANSIENT_BYTES = 4 << 30  # a prefill's temporaries at 8B scale


def running_kv_budget(free: int, total: int, allocated: int, gpu_tier: int, utilization: float | None) -> int:
    """Bytes for the running requests' KV on a GPU: with a utilization share, that share of the device less
    what the engine holds (weights) and will hold (GPU tier, temporaries), never more than is free; without,
    90% of the free memory less the GPU tier and temporaries."""
    spare = free - gpu_tier - TRANSIENT_BYTES
    if utilization is None:
        return int(0.9 * spare)
    return min(int(utilization * total) - allocated - gpu_tier - TRANSIENT_BYTES, spare)


class ModelRunner:
    def __init__(self, loaded: LoadedModel, config: EngineConfig, profiles: CriticalLayers) -> None:
        self.model, self.tokenizer, self.eos = loaded.model, loaded.tokenizer, loaded.eos_token_ids
        self.config, self.fingerprint, self.profiles = config, loaded.model_fingerprint, profiles
        self.backend = resolve_kernels(config.use_triton, self.model.device)
        graph_fusion = config.cuda_graph_probe  # the probe and a short recompute pass
        self.graphs = GraphCache(self.model, self.backend, config.cuda_graph_decode, graph_fusion, graph_fusion)
        self.batch_step = BatchDecodeStep(self.model, self.graphs, self.backend)
        self.prefixes = PrefixCache(config.prefix_cache_entries)
        self.grammars = Grammars(self.tokenizer, self.model.config.vocab_size, self.eos)
        self._shared_prefix: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def on_gpu(self) -> bool:
        return self.model.device.type == "cuda"

    def kv_bytes_per_token(self) -> int:
        c = self.model.config
        return 2 * c.num_layers * c.num_kv_heads * c.head_dim * self.model.dtype.itemsize

    def kv_token_budget(self, running_kv_bytes: int | None) -> int:
        """How many KV positions the running requests may hold together (EngineConfig.running_kv_bytes)."""
        per_token, device = self.kv_bytes_per_token(), self.model.device
        if running_kv_bytes is None and device.type == "cuda":  # leave the GPU tier and transients room
            total, allocated = torch.cuda.mem_get_info(device)[1], torch.cuda.memory_allocated(device)
            c = self.config
            running_kv_bytes = running_kv_budget(
                self.free_device_memory(), total, allocated, c.gpu_cache_bytes, c.gpu_memory_utilization
            )
        return max(running_kv_bytes or 4 << 30, per_token) // per_token

    def memory_fits(self, kv_tokens: int, prefill_tokens: int) -> bool:
        """Whether a request's cache and its prefill's activations fit the device memory free now (the
        caching allocator's idle blocks count as free). Always true on CPU (the KV budget bounds it)."""
        if self.model.device.type != "cuda":
            return True
        c = self.model.config
        # one layer's activations per prefill token (hidden states, q/k/v, MLP up and gate) at a time
        activations = prefill_tokens * (6 * c.hidden_size + 3 * c.intermediate_size) * self.model.dtype.itemsize
        need = kv_tokens * self.kv_bytes_per_token() + activations + (512 << 20)
        return need <= self.free_device_memory()

    def free_device_memory(self) -> int:
        """Free device memory, counting the caching allocator's idle blocks as free."""
        device = self.model.device
        free = torch.cuda.mem_get_info(device)[0]
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)

    def new_cache(self, needed: int) -> KVCache:
        if self.model.device.type == "cuda":  # graphs are keyed by the cache's buffers (graphs.py)
            needed = graph_friendly_capacity(needed, self.model.config.context_window)
        return self.model.new_cache(needed)

    # -- chunk KV ------------------------------------------------------------------------------

    def compute_chunks(self, prefix_ids: list[int], jobs: list[PrecomputeJob]) -> Iterator[list]:
        """Batches of (ChunkKV, text), each job computed after the shared prefix (its KV computed once)."""
        self._shared_prefix = self._shared_prefix or prefix_kv(self.model, prefix_ids, self.backend)
        batch_tokens = self.config.precompute_batch_tokens
        yield from compute_entries(self.model, self._shared_prefix, jobs, self.fingerprint, batch_tokens, self.backend)

    # -- prefill -------------------------------------------------------------------------------

    def fusion_context(self, layout: Layout, cache: KVCache | None = None) -> FusionContext:
        """The fused cache before any recompute (chunks placed, fresh rows empty)."""
        cache = cache or self.model.new_cache(len(layout.token_ids))
        place_chunks(self.model, cache, layout.chunks, self.backend)
        ids = ids_on_device(layout.token_ids, self.model.device)
        return build_context(self.model, cache, ids, layout.chunks, 0, self.backend, self.graphs)

    def start_prefill(
        self,
        layout: Layout,
        selector: Selector,
        ratio: float,
        max_new_tokens: int,
        cache: KVCache | None = None,
    ) -> PrefillTask:
        """A prefill's cache (room for max_new_tokens more; or `cache`, reused), its chunks placed and tokens
        selected; the task then computes its positions a slice at a time (PrefillTask.run)."""
        cache = cache or self.new_cache(len(layout.token_ids) + max_new_tokens)
        return PrefillTask(
            self.model,
            cache,
            layout,
            selector if layout.chunks else None,
            ratio,
            self.prefixes,
            self.backend,
            self.graphs,
        )

    def finish_prefill(self, task: PrefillTask, request: Request, logits: torch.Tensor) -> Prefill:
        """The finished task as a Prefill, with what fusion did in the request's stats."""
        layout, stats = task.layout, request.stats
        if layout.chunks:
            selected = task.selected
            assert selected is not None  # a layout with chunks always runs its selection
            recomputed, reused = count_reuse(layout, selected)
            stats.count_fusion(
                selector=task.selector_name,
                ratio=task.ratio,
                prefix_tokens=task.prefix_tokens,
                chunk_tokens=task.n_chunk,
                recomputed=int(selected.numel()),
                chunks_recomputed=recomputed,
                chunks_reused=reused,
            )
        stats.prefill_done(task.seconds, time.perf_counter() - request.t_start)
        return Prefill(logits[-1], layout.token_ids, task.cache, stats, task.selected)

    def sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def profile_critical_layer(self, layout: Layout) -> int:
        """QCFuse's layer for this model, profiled on this prompt and kept on disk (an explicit step, once
        per model and cache directory: the executor runs it before the first request that needs it)."""
        layer = self.profiles.get(self.fingerprint)
        if layer is None:
            layer, recall = profile_layer([self.fusion_context(layout)])
            self.profiles.put(self.fingerprint, layer, recall, samples=1)
        return layer

    # -- decode --------------------------------------------------------------------------------

    def decode_state(self, pre: Prefill, request: Request) -> DecodeState:
        params, constraint = request.sampling, self.grammars.constraint(request.sampling)
        return DecodeState(pre, params, self.tokenizer, self.eos, self.model.device, request.t_start, constraint)

    def fork_decode(self, pre: Prefill, request: Request) -> DecodeState:
        """Another answer to a finished prefill (n > 1): its own copy of the prompt's cache and of the stats,
        its own sampler; the first token is sampled from the same logits."""
        n = len(pre.token_ids)
        cache = self.new_cache(n + request.sampling.max_new_tokens)
        cache.k[:, :n], cache.v[:, :n] = pre.cache.k[:, :n], pre.cache.v[:, :n]
        request.stats = replace(pre.stats)
        return self.decode_state(Prefill(pre.logits, pre.token_ids, cache, request.stats, pre.selected), request)

    @torch.inference_mode()
    def decode_batch(self, states: list[DecodeState]) -> torch.Tensor:
        """One forward over the next token of every state (continuous batching's step): logits [B, V].
        A request running alone takes the single-request step (CUDA-graphed where possible)."""
        if len(states) == 1:
            s = states[0]
            if s.step is None:
                graphs = self.graphs if s.params.max_new_tokens > 2 else None
                s.step = make_decode_step(self.model, s.pre.cache, graphs, self.backend)
            return s.step(s.token, s.position)[None]
        caches = [s.pre.cache for s in states]
        return self.batch_step(caches, [s.token for s in states], [s.position for s in states])

    def decode(self, pre: Prefill, request: Request) -> Iterator[GenerationChunk]:
        params = request.sampling
        graphs = self.graphs if params.max_new_tokens > 2 else None
        step = make_decode_step(self.model, pre.cache, graphs, self.backend)
        yield from decode_loop(self.decode_state(pre, request), step)


def count_reuse(layout: Layout, selected: torch.Tensor) -> tuple[int, int]:
    """(recomputed, reused): chunks whose every token the selector recomputed (their cached KV served
    nothing), and chunks loaded from the store whose KV was at least partly kept."""
    positions = sorted(selected.tolist())
    recomputed = reused = 0
    for chunk, loaded in zip(layout.chunks, layout.loaded):
        n = chunk.entry.num_tokens
        fully = bisect.bisect_left(positions, chunk.start + n) - bisect.bisect_left(positions, chunk.start) == n
        recomputed += fully
        reused += loaded and not fully
    return recomputed, reused
