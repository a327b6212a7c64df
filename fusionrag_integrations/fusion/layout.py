"""The layout step: a prompt becomes token ids with each known chunk's cached entry at its place.

Two halves. `prepare` (on the caller's thread, before the request queues): render the chat template,
refuse a prompt too long in bytes, detect the stored chunks in the text (or take the given ones) and
tokenise the fresh text between them. `missing` and `build` (on the step loop): name the chunks that
have no entry (the executor computes them), then look the entries up and lay the token ids out,
noting long fresh paragraphs to learn.
This is also the one place chunk keys are derived: for precompute jobs, for a context-aware entry's
neighbours, and for learned paragraphs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from ..errors import ChunkNotFoundError, ContextLengthError, EmptyPromptError
from ..inputs import check_text
from ..model.config import Tokenizer
from ..outputs import GenerationStats
from ..store.chunk_kv import STANDALONE, ChunkKV, chunk_key, with_tenant
from ..store.detect import ChunkIndex
from ..store.registry import ChunkRegistry
from .placement import PlacedChunk
from .prompt import Prompt, encode_text, encode_texts, render_prompt, split_at_matches, split_paragraphs


@dataclass(frozen=True)
class PrecomputeJob:
    """A chunk to compute: its key and tokens, after its context (the neighbours computed before it)."""

    key: str
    text: str  # as stored in the catalog (stripped)
    context_ids: list[int]  # tokens computed before the chunk (its neighbours); their KV is not kept
    token_ids: list[int]
    context_id: str
    persist: bool = True  # False: computed only because that beats reading it back (the backend keeps its copy)


@dataclass
class Layout:
    token_ids: list[int]
    chunks: list[PlacedChunk] = field(default_factory=list)
    loaded: list[bool] = field(default_factory=list)  # per chunk: its KV came from the store (not computed now)
    learnable: list[tuple[str, int, int]] = field(default_factory=list)  # (paragraph text, start, end) to keep
    tenant: str = ""  # whose chunks it may use (store/chunk_kv.py: tenant_of)


Jobs = list[PrecomputeJob]


@dataclass
class Fresh:
    """Prompt text that is no chunk, tokenised; `learnable`: its text, when it is a paragraph to keep."""

    ids: list[int]
    learnable: str | None = None


@dataclass
class Draft:
    """A prompt prepared for layout: chunk texts (str) and fresh pieces in prompt order."""

    tenant: str
    given: list[str] | None  # chunks passed explicitly (computed when missing); None: detected
    segments: list[str | Fresh] = field(default_factory=list)


def max_token_bytes(tokenizer: Tokenizer) -> int:
    """The most UTF-8 bytes one token's text can take (an upper bound: byte-level vocabularies spell a
    byte with up to 2): a prompt longer than context_window x this is too long, known before tokenising."""
    return max([len(str(t).encode()) for t in tokenizer.get_vocab()] + [1])


def shared_prefix_ids(tokenizer: Tokenizer, chunk_prefix: str) -> list[int]:
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
        tokenizer: Tokenizer,
        fingerprints: tuple[str, str],
        prefix_ids: list[int],
        context_window: int,
        registry: ChunkRegistry,
        learn_min_chars: int,
        kv_format: str = "native",
        learn_default: bool = False,
    ) -> None:
        self.tokenizer, self.fingerprints, self.prefix_ids = tokenizer, fingerprints, prefix_ids
        self.kv_format, self.learn_default = kv_format, learn_default  # learn_chunks when a request leaves it None
        self.context_window, self.registry, self.learn_min_chars = context_window, registry, learn_min_chars
        self.max_token_bytes = max_token_bytes(tokenizer)
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

    def job(self, text: str, neighbors: Sequence[str], tenant: str = "") -> PrecomputeJob:
        """A precompute job; with neighbours, its context id names their own (standalone) keys."""
        ids = self.chunk_token_ids(text)
        context_ids: list[int] = []
        context_id = with_tenant(STANDALONE, tenant)
        if neighbors:
            neighbor_ids = [self.chunk_token_ids(n) for n in neighbors]
            context_ids = [t for n in neighbor_ids for t in n]
            names = [self.key(n, self.prefix_ids, with_tenant(STANDALONE, tenant)) for n in neighbor_ids]
            context_id = with_tenant("nbr:" + hashlib.sha256("|".join(names).encode()).hexdigest()[:16], tenant)
            if len(self.prefix_ids) + len(context_ids) + len(ids) >= self.context_window:
                raise ContextLengthError(
                    f"a chunk of {len(ids)} tokens after {len(context_ids)} neighbour tokens "
                    f"does not fit the context window of {self.context_window} tokens"
                )
        key = self.key(ids, self.prefix_ids + context_ids, context_id)
        return PrecomputeJob(key, text.strip(), context_ids, ids, context_id)

    def jobs(self, texts: list[str], contexts: Sequence[Sequence[str]], tenant: str = "") -> list[PrecomputeJob]:
        """A precompute job per text (its neighbours from `contexts`), after other processes' new rows."""
        self.registry.sync()
        return [self.job(text, nbrs, tenant) for text, nbrs in zip(texts, contexts)]

    def learned_entries(self, layout: Layout, k: torch.Tensor, v: torch.Tensor) -> list[tuple[ChunkKV, str]]:
        """Entries for the long fresh paragraphs a prefill just computed (k, v: its cache's [L, N, Hkv, D]).
        Their context id names what preceded them here (they are not standalone)."""
        entries = []
        for text, start, end in layout.learnable:
            before, ids = layout.token_ids[:start], layout.token_ids[start:end]
            context_id = with_tenant(
                "seen:" + hashlib.sha256(json.dumps(before).encode()).hexdigest()[:16], layout.tenant
            )
            key = self.key(ids, before, context_id)
            ids_t = torch.tensor(ids, dtype=torch.long)
            kv = (k[:, start:end].clone(), v[:, start:end].clone())
            entries.append((ChunkKV(key, ids_t, *kv, start, self.fingerprints[0], context_id, text), text))
        return entries

    # -- the layout: prepared on the caller's thread, resolved on the scheduler's ------------------

    def prepare(
        self, prompt: Prompt, tools: Sequence[dict] | None, chunks: Sequence[str] | None, learn: bool, tenant: str = ""
    ) -> Draft:
        """Render, check the size, find the chunks and tokenise the fresh text between them: everything
        that scales with the prompt's length and needs no model, so it runs before the request queues
        (a long prompt never holds the step loop). A prompt too long in bytes is refused before it is
        tokenised."""
        text, add_special = render_prompt(self.tokenizer, prompt, tools)
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.context_window * self.max_token_bytes:
            raise ContextLengthError(
                f"the prompt is {size} bytes: more than the context window of {self.context_window} tokens can "
                f"hold (a token of this tokenizer is at most {self.max_token_bytes} bytes)"
            )
        given = None if chunks is None else self._given(text, chunks)
        if given is None:
            matches = self.registry.find(text, tenant)
        elif given:
            index = ChunkIndex(window=min(len(c) for c in given))
            for c in given:
                index.add(c)
            matches = index.find(text)  # a given chunk inside another is served by that one's KV (longest wins)
        else:
            matches = []
        order: list[str | int] = []  # chunk texts, and indices into `fresh`, in prompt order
        fresh: list[tuple[str, bool]] = []  # (text, learnable)
        for kind, piece in split_at_matches(text, matches):
            if kind == "chunk":
                order.append(piece)
                continue
            paragraphs = split_paragraphs(piece, self.learn_min_chars, self._special_tokens) if learn else [(0, piece)]
            for learnable, part in paragraphs:
                order.append(len(fresh))
                fresh.append((part, bool(learnable)))
        ids = self._fresh_ids(fresh, add_special)
        segments = [s if isinstance(s, str) else Fresh(ids[s], fresh[s][0] if fresh[s][1] else None) for s in order]
        return Draft(tenant, given, segments)

    def _fresh_ids(self, fresh: list[tuple[str, bool]], add_special: bool) -> list[list[int]]:
        """The fresh pieces' ids; special tokens (a BOS) on the first piece only, which opens the prompt
        (split_at_matches always starts with a fresh piece)."""
        texts = [t for t, _ in fresh]
        if not add_special or not texts:
            return encode_texts(self.tokenizer, texts, False)
        return [encode_text(self.tokenizer, texts[0], True), *encode_texts(self.tokenizer, texts[1:], False)]

    @staticmethod
    def _given(text: str, chunks: Sequence[str]) -> list[str]:
        wanted = list(dict.fromkeys(c.strip() for c in chunks))
        if "" in wanted:
            raise EmptyPromptError("chunks holds an empty (or only whitespace) text")
        missing = [c for c in wanted if c not in text]  # checked before any KV is computed or stored
        if missing:
            raise ChunkNotFoundError(
                f"{len(missing)} of the given chunks do not occur in the prompt, e.g. {missing[0][:60]!r}"
            )
        return wanted

    def missing(self, draft: Draft) -> list[PrecomputeJob]:
        """Jobs for the draft's chunks that have no stored entry: the caller computes and stores them, then
        builds. (A given chunk counts as missing unless its standalone entry is stored.)"""
        tenant, jobs = draft.tenant, {}
        if draft.given:
            self.registry.sync()
            for job in (self.job(t, (), tenant) for t in draft.given):
                if not self.registry.has(job.key):
                    jobs[job.key] = job
        for text in (s for s in draft.segments if isinstance(s, str)):
            refs = self.registry.refs_for(text, tenant)
            if not any(self.registry.has(r.key) for r in refs):
                job = self.job(text, (), tenant)
                jobs[job.key] = job
            elif self.registry.cheaper_to_compute(refs[0]):  # a slow backend: computing beats reading it back
                job = replace(self.job(text, (), tenant), persist=False)
                jobs[job.key] = job
        return list(jobs.values())

    def build(self, draft: Draft, stats: GenerationStats, computed: set[str]) -> tuple[Layout | None, Jobs]:
        """The layout with each chunk's verified entry at its place, or (None, jobs) for chunks whose entry
        turned out missing or bad after all (compute and store those, then build again). `computed`: the
        chunk texts the caller computed for this request (reported as computed, not reused)."""
        tenant = draft.tenant
        chunk_texts = [s for s in draft.segments if isinstance(s, str)]
        self.registry.prefetch(chunk_texts, tenant)
        layout = Layout([], tenant=tenant)
        hot, jobs = 0, []
        for segment in draft.segments:
            if isinstance(segment, Fresh):
                start = len(layout.token_ids)
                layout.token_ids += segment.ids
                if segment.learnable is not None and not self.registry.knows(segment.learnable, tenant):
                    layout.learnable.append((segment.learnable, start, len(layout.token_ids)))
                continue
            entry = self.registry.entry_for(segment, tenant)
            if entry is None:
                jobs.append(self.job(segment, (), tenant))
                continue
            hot += segment not in computed and self.registry.store.last_tier in ("gpu", "cpu")
            layout.chunks.append(PlacedChunk(entry, len(layout.token_ids)))
            layout.token_ids += entry.token_ids.tolist()
            layout.loaded.append(segment not in computed)
        if jobs:
            return None, jobs
        stats.count_chunks(len(layout.chunks), sum(not loaded for loaded in layout.loaded), hot)
        return layout, []
