"""FusionEngine: load a model, precompute chunk KV, generate and stream. Glue only: no math here."""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .config import EngineConfig
from .errors import ChunkNotFoundError, ContextLengthError, EmptyPromptError, InvalidArgumentError
from .fusion.prompt import Prompt, encode_text, render_prompt, split_at_matches, split_paragraphs
from .fusion.recompute import FusionContext, PlacedChunk, build_context, fused_prefill, place_chunks
from .fusion.selectors import Selector, make_selector
from .inputs import check_neighbors, check_ratio, check_text, check_texts
from .model.loader import LoadedModel, load_model, resolve_device, resolve_dtype
from .model.transformer import AttentionMode
from .outputs import Generation, GenerationChunk, GenerationStats
from .runtime.decode import Prefill, decode_loop
from .runtime.precompute import PrecomputeJob, compute_entries, prefix_kv
from .runtime.probe_graph import graph_friendly_capacity
from .runtime.sampling import SamplingParams
from .runtime.stepwise import StepwiseStream
from .store.chunk_kv import STANDALONE, ChunkKV, chunk_key
from .store.detect import ChunkIndex, Match
from .store.integrity import cache_secret
from .store.registry import ChunkRegistry


@dataclass
class PreparedPrompt:
    token_ids: list[int]
    chunks: list[PlacedChunk] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    learnable: list[tuple[str, int, int]] = field(default_factory=list)  # (paragraph text, start, end) to keep
    loaded: list[bool] = field(default_factory=list)  # per chunk: its KV came from the store (not computed now)


class FusionEngine:
    """One model, one tokenizer, one chunk-KV store. Requests take turns step by step (a lock held for
    one prefill or one decode token at a time, never while a stream waits for its reader)."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.loaded = loaded
        self.model = loaded.model
        self.model.use_triton = self.config.use_triton
        self.model.graph_probe = self.config.cuda_graph_probe
        self.tokenizer = loaded.tokenizer
        self._lock = threading.RLock()
        self.prefix_ids = self._shared_prefix_ids()
        namespace = hashlib.sha256(
            json.dumps([loaded.model_fingerprint, loaded.tokenizer_fingerprint, self.prefix_ids]).encode()
        ).hexdigest()[:16]
        self.chunks = ChunkRegistry(
            namespace=namespace,
            model_fingerprint=loaded.model_fingerprint,
            device=self.model.device,
            gpu_bytes=self.config.gpu_cache_bytes,
            cpu_bytes=self.config.cpu_cache_bytes,
            directory=self.config.cache_dir / "kv" / namespace if self.config.persist else None,
            min_chunk_chars=self.config.fusion.min_chunk_chars,
            secret=cache_secret(),
        )
        self._prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None
        self._prompt_prefixes: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.aux_model = None  # CacheClip's auxiliary model (same tokenizer); None = the model itself
        self.critical_layer = self.config.fusion.critical_layer  # QCFuse; see selectors.profile_critical_layer
        self.counters: Counter[str] = Counter()  # chunks computed / learned, across calls
        # chat-template markup ends a paragraph for learn_chunks
        self._special_tokens = [*self.tokenizer.all_special_tokens, *self.tokenizer.get_added_vocab()]

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        config: EngineConfig | None = None,
    ) -> FusionEngine:
        """model: a local HF directory (safetensors), a .gguf file, or a hub id already in the local HF cache."""
        config = config or EngineConfig()
        dev = resolve_device(device)
        loaded = load_model(model, dev, resolve_dtype(dtype, dev), config.model_cache_dir)
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

    # -- chunk KV ----------------------------------------------------------------------

    def _shared_prefix_ids(self) -> list[int]:
        """BOS (or EOS when the tokenizer has no BOS) + chunk_prefix: every chunk is computed after it,
        so the attention sink sits on a token every prompt starts with, not on the chunk's first word."""
        tok = self.tokenizer
        sink = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        ids = [sink] if sink is not None else []
        return ids + (encode_text(tok, self.config.chunk_prefix, False) if self.config.chunk_prefix else [])

    def chunk_token_ids(self, text: str) -> list[int]:
        stripped = check_text(text, "chunk text").strip()
        if not stripped:
            raise EmptyPromptError("a chunk text is empty (or only whitespace)")
        ids = encode_text(self.tokenizer, stripped, False)
        if len(self.prefix_ids) + len(ids) >= self.context_window:
            raise ContextLengthError(
                f"a chunk of {len(ids)} tokens does not fit the context window of {self.context_window} tokens "
                "(split it into smaller chunks)"
            )
        return ids

    def precompute(
        self,
        texts: Sequence[str],
        context: Sequence[str] | None = None,
        neighbors: Sequence[Sequence[str]] | None = None,
        show_progress: bool | None = None,
    ) -> list[str]:
        """Compute and store the KV of each text (stripped of surrounding whitespace); return their keys.

        Idempotent: texts already stored are not computed again. Progress is shown for large inputs
        on a terminal. Standalone by default: each chunk after the shared prefix only.
        neighbors: per text, the texts placed before it at compute time (FusionRAG's similarity-guided
        preprocessing: its nearest chunks), so its cached KV already carries their cross-attention.
        context: one such list for every text. Only the chunk's KV is stored; the context id in its
        key names the neighbours, and at query time a context-aware entry is preferred.
        """
        texts = check_texts(texts, "texts")
        if context is not None and neighbors is not None:
            raise InvalidArgumentError(
                "pass context= (shared by all texts) or neighbors= (one list per text), not both"
            )
        if neighbors is not None:
            contexts = check_neighbors(neighbors, len(texts))
        else:
            contexts = [check_texts(context, "context") if context is not None else []] * len(texts)
        if show_progress is not None and not isinstance(show_progress, bool):
            raise InvalidArgumentError(f"show_progress must be True, False or None, got {show_progress!r}")
        with self._lock:
            self.chunks.sync()
            jobs: dict[str, PrecomputeJob] = {}
            keys = []
            for text, nbrs in zip(texts, contexts):
                job = self._job(text, nbrs)
                keys.append(job.key)
                if job.key not in jobs and not self.chunks.has(job.key):
                    jobs[job.key] = job
            self._compute(list(jobs.values()), show_progress)
            return keys

    def _job(self, text: str, neighbors: Sequence[str]) -> PrecomputeJob:
        ids = self.chunk_token_ids(text)
        context_ids: list[int] = []
        context_id = STANDALONE
        if neighbors:
            neighbor_ids = [self.chunk_token_ids(n) for n in neighbors]
            context_ids = [t for n in neighbor_ids for t in n]
            names = [self._key(n, [], STANDALONE) for n in neighbor_ids]  # the neighbours' own (standalone) keys
            context_id = "nbr:" + hashlib.sha256("|".join(names).encode()).hexdigest()[:16]
            if len(self.prefix_ids) + len(context_ids) + len(ids) >= self.context_window:
                raise ContextLengthError(
                    f"a chunk of {len(ids)} tokens after {len(context_ids)} neighbour tokens "
                    f"does not fit the context window of {self.context_window} tokens"
                )
        return PrecomputeJob(self._key(ids, context_ids, context_id), text.strip(), context_ids, ids, context_id)

    def _key(self, ids: list[int], context_ids: list[int], context_id: str) -> str:
        return chunk_key(
            self.loaded.model_fingerprint,
            self.loaded.tokenizer_fingerprint,
            self.prefix_ids + context_ids,
            ids,
            context_id,
        )

    def _compute(self, jobs: list[PrecomputeJob], show_progress: bool | None) -> list[ChunkKV]:
        """Compute, store and return these jobs' entries (in the order computed)."""
        done: list[ChunkKV] = []
        if not jobs:
            return done
        self._prefix_kv = self._prefix_kv or prefix_kv(self.model, self.prefix_ids)
        show = (not show_progress) if show_progress is not None else (len(jobs) < 16 or None)
        with tqdm(total=len(jobs), desc="precompute", unit="chunk", disable=show) as progress:
            for entries in compute_entries(
                self.model, self._prefix_kv, jobs, self.loaded.model_fingerprint, self.config.precompute_batch_tokens
            ):
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
        chunks: Sequence[str] | None = None,
        recompute_ratio: float | None = None,
        selector: str | Selector | None = None,
        tools: Sequence[dict] | None = None,
        learn_chunks: bool | None = None,
    ) -> Iterator[GenerationChunk]:
        """Text pieces as they are decoded; the last piece carries finish_reason, usage and stats.

        prompt: a string (used as is) or chat messages (rendered with the tokenizer's chat template).
        chunks: None = detect every precomputed chunk inside the prompt; a list = these texts (computed
        now if not cached) must occur in the prompt; [] = no fusion (plain prefill).
        selector / recompute_ratio: which chunk tokens to recompute (defaults from EngineConfig.fusion).
        learn_chunks: keep the KV of this prompt's long paragraphs for later prompts (default: EngineConfig).
        """
        params = SamplingParams(max_new_tokens, temperature, top_p, top_k, seed, stop)
        chosen, ratio = self._selector(selector), self._ratio(recompute_ratio)
        chunks, learn = self._check_chunks(chunks), self._learn_flag(learn_chunks)
        steps = self._generate(prompt, params, tools, chunks, chosen, ratio, learn)
        return StepwiseStream(steps, self._lock)

    def _ratio(self, recompute_ratio: float | None) -> float:
        return check_ratio(self.config.fusion.recompute_ratio if recompute_ratio is None else recompute_ratio)

    def _selector(self, selector: str | Selector | None) -> Selector:
        chosen = self.config.fusion.selector if selector is None else selector
        return make_selector(chosen, self.config.fusion, self.critical_layer, self.aux_model)

    def _learn_flag(self, learn_chunks: bool | None) -> bool:
        if learn_chunks is not None and not isinstance(learn_chunks, bool):
            raise InvalidArgumentError(f"learn_chunks must be True, False or None, got {learn_chunks!r}")
        return self.config.learn_chunks if learn_chunks is None else learn_chunks

    @staticmethod
    def _check_chunks(chunks: Sequence[str] | None) -> list[str] | None:
        return None if chunks is None else check_texts(chunks, "chunks")

    def prefill(
        self,
        prompt: Prompt,
        *,
        chunks: Sequence[str] | None = None,
        selector: str | Selector | None = None,
        recompute_ratio: float | None = None,
        tools: Sequence[dict] | None = None,
        max_new_tokens: int = 1,
        learn_chunks: bool | None = None,
    ) -> Prefill:
        """Process the prompt (fusing cached chunks) without sampling: the evaluation harness and
        tests read the first-token distribution from here. Same fusion arguments as `stream`."""
        chosen, ratio = self._selector(selector), self._ratio(recompute_ratio)
        chunks, learn = self._check_chunks(chunks), self._learn_flag(learn_chunks)
        with self._lock:
            return self._prefill(prompt, tools, chunks, chosen, ratio, max_new_tokens, learn)

    def fusion_context(
        self, prompt: Prompt, *, chunks: Sequence[str] | None = None, tools: Sequence[dict] | None = None
    ) -> FusionContext:
        """The fused cache before any recompute (chunks placed, fresh rows empty): for selectors'
        tests and profiling. Raises ChunkNotFoundError when the prompt holds no known chunk."""
        chunks = self._check_chunks(chunks)
        with self._lock:
            prepared = self._prepare(prompt, tools, chunks)
            if not prepared.chunks:
                raise ChunkNotFoundError("the prompt contains no precomputed chunk")
            cache = self.model.new_cache(len(prepared.token_ids))
            place_chunks(self.model, cache, prepared.chunks)
            return build_context(
                self.model, cache, torch.tensor(prepared.token_ids, device=self.device), prepared.chunks
            )

    def _prefill(
        self, prompt: Prompt, tools, chunks, selector: Selector, ratio: float, max_new_tokens: int, learn: bool = False
    ) -> Prefill:
        t_start = time.perf_counter()
        prepared = self._prepare(prompt, tools, chunks, learn)
        prompt_ids, stats = prepared.token_ids, prepared.stats
        self._check_length(len(prompt_ids), max_new_tokens)
        needed = len(prompt_ids) + max_new_tokens
        if self.device.type == "cuda":  # the graphed probe is keyed by the cache's buffers (probe_graph.py)
            needed = graph_friendly_capacity(needed, self.context_window)
        cache = self.model.new_cache(needed)
        t_prefill = time.perf_counter()
        ids = torch.tensor(prompt_ids, device=self.device)
        selected = None
        if prepared.chunks:
            prefix_ids, prefix_kv = self._cached_prompt_prefix(prompt_ids, prepared.chunks[0].start, selector)
            logits, selected, n_chunk = fused_prefill(
                self.model, cache, ids, prepared.chunks, selector, ratio, prefix_kv
            )
            self._remember_prompt_prefix(prefix_ids, prefix_kv, cache)
            stats.prefix_tokens_reused = len(prefix_ids) if prefix_kv is not None else 0
            stats.selector, stats.recompute_ratio = selector.name, ratio
            stats.tokens_recomputed = int(selected.numel())
            stats.tokens_reused = n_chunk - stats.tokens_recomputed
        else:
            positions = torch.arange(len(prompt_ids), device=self.device)
            logits = self.model.forward(ids, positions, cache, AttentionMode.CAUSAL_FROM_ZERO, len(prompt_ids) - 1)
        logits = logits[-1]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t_done = time.perf_counter()
        self._learn(prepared, cache)  # after the timing: storing is not on the path to the first token
        if selected is not None:
            self._count_reuse(prepared, selected)
        stats.prefill_ms = (t_done - t_prefill) * 1e3
        stats.ttft_ms = (t_done - t_start) * 1e3  # time to the logits; generation adds the sampling
        return Prefill(logits, prompt_ids, cache, stats, selected)

    @staticmethod
    def _count_reuse(prepared: PreparedPrompt, selected: torch.Tensor) -> None:
        """chunks_recomputed: chunks whose every token the selector recomputed (their cached KV served
        nothing); chunks_reused: chunks loaded from the store whose KV was at least partly kept."""
        positions = sorted(selected.tolist())
        stats = prepared.stats
        for chunk, loaded in zip(prepared.chunks, prepared.loaded):
            n = chunk.entry.num_tokens
            fully = bisect.bisect_left(positions, chunk.start + n) - bisect.bisect_left(positions, chunk.start) == n
            stats.chunks_recomputed += fully
            stats.chunks_reused += loaded and not fully

    def _cached_prompt_prefix(self, prompt_ids: list[int], length: int, selector: Selector):
        """(prefix ids, cached KV or None). Selector `full` stays a true full prefill: the quality
        and speed baseline."""
        if not length or not self.config.prefix_cache_entries or selector.name == "full":
            return (), None
        key = tuple(prompt_ids[:length])
        kv = self._prompt_prefixes.get(key)
        if kv is not None:
            self._prompt_prefixes.move_to_end(key)
        return key, kv

    def _remember_prompt_prefix(self, key: tuple[int, ...], kv, cache) -> None:
        if not key or kv is not None:
            return
        self._prompt_prefixes[key] = (cache.k[:, : len(key)].clone(), cache.v[:, : len(key)].clone())
        while len(self._prompt_prefixes) > self.config.prefix_cache_entries:
            self._prompt_prefixes.popitem(last=False)

    def _generate(
        self, prompt: Prompt, params: SamplingParams, tools, chunks, selector: Selector, ratio: float, learn: bool
    ) -> Iterator[GenerationChunk]:
        t_start = time.perf_counter()
        pre = self._prefill(prompt, tools, chunks, selector, ratio, params.max_new_tokens, learn)
        yield from decode_loop(
            self.model, self.tokenizer, self.loaded.eos_token_ids, pre, params, t_start, self.config.cuda_graph_decode
        )

    def decode(self, pre: Prefill, **sampling) -> Generation:
        """Continue generating from a `prefill` result (its cache is consumed): the evaluation harness
        reads the first-token logits and the answer from one prefill. Sampling arguments as in `stream`."""
        params = SamplingParams(**{"max_new_tokens": 256, **sampling})
        self._check_length(len(pre.token_ids), params.max_new_tokens)
        with self._lock:
            pieces = list(
                decode_loop(
                    self.model,
                    self.tokenizer,
                    self.loaded.eos_token_ids,
                    pre,
                    params,
                    time.perf_counter() - pre.stats.ttft_ms / 1e3,
                    self.config.cuda_graph_decode,
                )
            )
        last = pieces[-1]
        return Generation(
            "".join(p.text for p in pieces),
            [t for p in pieces for t in p.token_ids],
            last.finish_reason,
            last.usage,
            last.stats,
        )

    def _prepare(self, prompt: Prompt, tools, chunks: Sequence[str] | None, learn: bool = False) -> PreparedPrompt:
        """Render, find chunks, and lay out token ids with each chunk's cached entry at its position."""
        text, add_special = render_prompt(self.tokenizer, prompt, tools)
        matches, computed_now = self._find_chunks(text, chunks)
        prepared = PreparedPrompt([])
        for kind, piece in split_at_matches(text, matches):
            if kind == "text":
                self._add_fresh_text(prepared, piece, add_special, learn)
                continue
            entry, computed = self._entry_for(piece)
            computed = computed or piece in computed_now
            prepared.chunks.append(PlacedChunk(entry, len(prepared.token_ids)))
            prepared.token_ids += entry.token_ids.tolist()
            prepared.stats.chunks_found += 1
            prepared.stats.chunks_computed += computed
            prepared.loaded.append(not computed)
        return prepared

    def _add_fresh_text(self, prepared: PreparedPrompt, text: str, add_special: bool, learn: bool) -> None:
        """Tokenise fresh text; when learning, each long paragraph alone (its KV is kept after the prefill)."""
        if not learn:
            prepared.token_ids += encode_text(self.tokenizer, text, add_special and not prepared.token_ids)
            return
        for learnable, piece in split_paragraphs(text, self.config.learn_min_chars, self._special_tokens):
            start = len(prepared.token_ids)
            prepared.token_ids += encode_text(self.tokenizer, piece, add_special and not prepared.token_ids)
            if learnable and piece not in self.chunks.index:
                prepared.learnable.append((piece, start, len(prepared.token_ids)))

    def _learn(self, prepared: PreparedPrompt, cache) -> None:
        """Keep the KV this prefill computed for long fresh paragraphs, so later prompts containing them
        reuse it. Their context id names what preceded them here (they are not standalone)."""
        entries = []
        for text, start, end in prepared.learnable:
            before = prepared.token_ids[:start]
            context_id = "seen:" + hashlib.sha256(json.dumps(before).encode()).hexdigest()[:16]
            ids = prepared.token_ids[start:end]
            key = chunk_key(self.loaded.model_fingerprint, self.loaded.tokenizer_fingerprint, before, ids, context_id)
            entries.append(
                (
                    ChunkKV(
                        key,
                        torch.tensor(ids, dtype=torch.long),
                        cache.k[:, start:end].clone(),
                        cache.v[:, start:end].clone(),
                        start,
                        self.loaded.model_fingerprint,
                        context_id,
                        text,
                    ),
                    text,
                )
            )
        if entries:
            self.chunks.add(entries)
            self.counters["chunks_learned"] += len(entries)

    def _find_chunks(self, text: str, chunks: Sequence[str] | None) -> tuple[list[Match], set[str]]:
        """-> (matches, texts whose KV this call had to compute)."""
        if chunks is None:
            return self.chunks.find(text), set()
        if not chunks:
            return [], set()
        wanted = list(dict.fromkeys(c.strip() for c in chunks))
        if "" in wanted:
            raise EmptyPromptError("chunks holds an empty (or only whitespace) text")
        missing = [c for c in wanted if c not in text]  # checked before any KV is computed or stored
        if missing:
            raise ChunkNotFoundError(
                f"{len(missing)} of the given chunks do not occur in the prompt, e.g. {missing[0][:60]!r}"
            )
        self.chunks.sync()
        computed_now = {t for t in wanted if not any(self.chunks.has(r.key) for r in self.chunks.refs_for(t))}
        self.precompute(wanted)
        index = ChunkIndex(window=min(len(c) for c in wanted))
        for c in wanted:
            index.add(c)
        # a chunk that lies inside another given chunk is served by that one's KV (the longest match wins)
        return index.find(text), computed_now

    def _entry_for(self, text: str) -> tuple[ChunkKV, bool]:
        """The verified entry for a chunk text (context-aware preferred), computing it if missing or bad."""
        entry = self.chunks.entry_for(text)
        if entry is not None:
            return entry, False
        return self._compute([self._job(text, ())], show_progress=False)[0], True

    def _check_length(self, n_prompt: int, max_new_tokens: int) -> None:
        if n_prompt == 0:
            raise EmptyPromptError("the prompt encodes to zero tokens")
        if n_prompt + max_new_tokens > self.context_window:
            raise ContextLengthError(
                f"prompt of {n_prompt} tokens + max_new_tokens={max_new_tokens} exceeds the context window of "
                f"{self.context_window} tokens; shorten the prompt or lower max_new_tokens"
            )
