"""The layout step: a prompt becomes token ids with each known chunk's cached entry at its place.

Render (chat template), detect the stored chunks in the text (or take the given ones), look their
entries up (computing what is missing), tokenise the fresh text between them, and note long fresh
paragraphs to learn. This is also the one place chunk keys are derived: for precompute jobs, for a
context-aware entry's neighbours, and for learned paragraphs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ChunkNotFoundError, ContextLengthError, EmptyPromptError
from ..inputs import check_text
from ..outputs import GenerationStats
from ..runtime.precompute import PrecomputeJob
from ..store.chunk_kv import STANDALONE, ChunkKV, chunk_key
from ..store.detect import ChunkIndex, Match
from ..store.registry import ChunkRegistry
from .placement import PlacedChunk
from .prompt import Prompt, encode_text, render_prompt, split_at_matches, split_paragraphs

Compute = Callable[[list[PrecomputeJob]], list[ChunkKV]]  # compute and store these jobs' entries


@dataclass
class Layout:
    token_ids: list[int]
    chunks: list[PlacedChunk] = field(default_factory=list)
    loaded: list[bool] = field(default_factory=list)  # per chunk: its KV came from the store (not computed now)
    learnable: list[tuple[str, int, int]] = field(default_factory=list)  # (paragraph text, start, end) to keep


def shared_prefix_ids(tokenizer, chunk_prefix: str) -> list[int]:
    """BOS (or EOS when the tokenizer has no BOS) + chunk_prefix: every chunk is computed after it, so
    the attention sink sits on a token every prompt starts with, not on the chunk's first word."""
    sink = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return ([sink] if sink is not None else []) + (encode_text(tokenizer, chunk_prefix, False) if chunk_prefix else [])


def store_namespace(fingerprints: tuple[str, str], prefix_ids: list[int], kv_format: str = "native") -> str:
    """The chunk store's folder name: entries are only comparable under one model, tokenizer and prefix
    (and a store keeps one stored-KV format)."""
    parts = [*fingerprints, prefix_ids] + ([kv_format] if kv_format != "native" else [])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


class PromptLayout:
    def __init__(
        self,
        tokenizer,
        fingerprints: tuple[str, str],
        prefix_ids: list[int],
        context_window: int,
        registry: ChunkRegistry,
        learn_min_chars: int,
        kv_format: str = "native",
    ) -> None:
        self.tokenizer, self.fingerprints, self.prefix_ids = tokenizer, fingerprints, prefix_ids
        self.kv_format = kv_format
        self.context_window, self.registry, self.learn_min_chars = context_window, registry, learn_min_chars
        # chat-template markup ends a paragraph for learn_chunks
        self._special_tokens = [*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()]

    # -- keys: the one place they are derived ------------------------------------------------

    def key(self, ids: list[int], before: list[int], context_id: str) -> str:
        """The key of chunk tokens `ids` computed after tokens `before` (the shared prefix included)."""
        return chunk_key(*self.fingerprints, before, ids, context_id, self.kv_format)

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

    def job(self, text: str, neighbors: Sequence[str]) -> PrecomputeJob:
        """A precompute job; with neighbours, its context id names their own (standalone) keys."""
        ids = self.chunk_token_ids(text)
        context_ids: list[int] = []
        context_id = STANDALONE
        if neighbors:
            neighbor_ids = [self.chunk_token_ids(n) for n in neighbors]
            context_ids = [t for n in neighbor_ids for t in n]
            names = [self.key(n, self.prefix_ids, STANDALONE) for n in neighbor_ids]
            context_id = "nbr:" + hashlib.sha256("|".join(names).encode()).hexdigest()[:16]
            if len(self.prefix_ids) + len(context_ids) + len(ids) >= self.context_window:
                raise ContextLengthError(
                    f"a chunk of {len(ids)} tokens after {len(context_ids)} neighbour tokens "
                    f"does not fit the context window of {self.context_window} tokens"
                )
        key = self.key(ids, self.prefix_ids + context_ids, context_id)
        return PrecomputeJob(key, text.strip(), context_ids, ids, context_id)

    def learned_entries(self, layout: Layout, k: torch.Tensor, v: torch.Tensor) -> list[tuple[ChunkKV, str]]:
        """Entries for the long fresh paragraphs a prefill just computed (k, v: its cache's [L, N, Hkv, D]).
        Their context id names what preceded them here (they are not standalone)."""
        entries = []
        for text, start, end in layout.learnable:
            before, ids = layout.token_ids[:start], layout.token_ids[start:end]
            context_id = "seen:" + hashlib.sha256(json.dumps(before).encode()).hexdigest()[:16]
            key = self.key(ids, before, context_id)
            ids_t = torch.tensor(ids, dtype=torch.long)
            kv = (k[:, start:end].clone(), v[:, start:end].clone())
            entries.append((ChunkKV(key, ids_t, *kv, start, self.fingerprints[0], context_id, text), text))
        return entries

    # -- the layout ----------------------------------------------------------------------------

    def build(
        self, prompt: Prompt, tools, chunks: Sequence[str] | None, learn: bool, stats: GenerationStats, compute: Compute
    ) -> Layout:
        """Render, find chunks, and lay out token ids with each chunk's cached entry at its position."""
        text, add_special = render_prompt(self.tokenizer, prompt, tools)
        matches, computed_now = self._find_chunks(text, chunks, compute)
        self.registry.prefetch(m.text for m in matches)
        layout = Layout([])
        for kind, piece in split_at_matches(text, matches):
            if kind == "text":
                self._add_fresh_text(layout, piece, add_special, learn)
                continue
            entry, computed = self._entry_for(piece, compute)
            stats.chunks_hot += not computed and self.registry.store.last_tier in ("gpu", "cpu")
            computed = computed or piece in computed_now
            layout.chunks.append(PlacedChunk(entry, len(layout.token_ids)))
            layout.token_ids += entry.token_ids.tolist()
            layout.loaded.append(not computed)
            stats.chunks_found += 1
            stats.chunks_computed += computed
        return layout

    def _add_fresh_text(self, layout: Layout, text: str, add_special: bool, learn: bool) -> None:
        """Tokenise fresh text; when learning, each long paragraph alone (its KV is kept after the prefill)."""
        if not learn:
            layout.token_ids += encode_text(self.tokenizer, text, add_special and not layout.token_ids)
            return
        for learnable, piece in split_paragraphs(text, self.learn_min_chars, self._special_tokens):
            start = len(layout.token_ids)
            layout.token_ids += encode_text(self.tokenizer, piece, add_special and not layout.token_ids)
            if learnable and piece not in self.registry.index:
                layout.learnable.append((piece, start, len(layout.token_ids)))

    def _find_chunks(self, text: str, chunks: Sequence[str] | None, compute: Compute) -> tuple[list[Match], set[str]]:
        """-> (matches, texts whose KV this call had to compute)."""
        if chunks is None:
            return self.registry.find(text), set()
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
        self.registry.sync()
        jobs = {job.key: job for job in (self.job(t, ()) for t in wanted) if not self.registry.has(job.key)}
        computed_now = {t for t in wanted if not any(self.registry.has(r.key) for r in self.registry.refs_for(t))}
        compute(list(jobs.values()))
        index = ChunkIndex(window=min(len(c) for c in wanted))
        for c in wanted:
            index.add(c)
        # a chunk that lies inside another given chunk is served by that one's KV (the longest match wins)
        return index.find(text), computed_now

    def _entry_for(self, text: str, compute: Compute) -> tuple[ChunkKV, bool]:
        """The verified entry for a chunk text (context-aware preferred), computing it if missing or bad."""
        entry = self.registry.entry_for(text)
        if entry is not None:
            return entry, False
        return compute([self.job(text, ())])[0], True
