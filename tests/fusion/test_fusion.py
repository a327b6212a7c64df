"""Fusion invariants: a full recompute equals a plain prefill; re-rotated keys equal fresh ones."""

from __future__ import annotations

import random

import pytest
import torch

from fusionrag_integrations import ChunkNotFoundError
from fusionrag_integrations.model.attention import AttentionMode
from tests.conftest import DOCS, engine_on, rag_messages


def plain_prefill(engine, token_ids: list[int]):
    n = len(token_ids)
    cache = engine.model.new_cache(n)
    logits = engine.model.forward(torch.tensor(token_ids), torch.arange(n), cache, AttentionMode.CAUSAL_FROM_ZERO)
    return logits[-1], cache


@pytest.fixture(params=["smollm2", "qwen3", "llama3_rope"])
def any_engine(request, smol_engine, tiny_engines, tmp_path):
    loaded = smol_engine.loaded if request.param == "smollm2" else tiny_engines[request.param].loaded
    return engine_on(loaded, tmp_path / "cache")


def test_full_selector_equals_plain_prefill(any_engine):
    any_engine.precompute(DOCS)
    pre = any_engine.prefill(rag_messages(DOCS), selector="full")
    assert pre.stats.chunks_found == len(DOCS) and pre.stats.tokens_reused == 0
    ref, _ = plain_prefill(any_engine, pre.token_ids)
    assert ref.std() > 0.05
    assert (pre.logits - ref).abs().max().item() < 1e-4


def test_ratio_one_equals_plain_prefill_for_any_selector(smol):
    smol.precompute(DOCS)
    ref = None
    for selector in ("fusionrag", "epic", "cacheblend"):
        pre = smol.prefill(rag_messages(DOCS), selector=selector, recompute_ratio=1.0)
        ref = plain_prefill(smol, pre.token_ids)[0] if ref is None else ref
        assert (pre.logits - ref).abs().max().item() < 1e-4, selector


def test_rerotated_chunk_keys_equal_fresh_layer0_keys(any_engine):
    """Layer 0 sees only a token and its position, so re-rotation must reproduce it exactly."""
    any_engine.precompute(DOCS)
    pre = any_engine.prefill(rag_messages(DOCS), selector="none")
    _, full_cache = plain_prefill(any_engine, pre.token_ids)
    moved = 0
    for chunk in any_engine.fusion_context(rag_messages(DOCS)).chunks:
        rows = slice(chunk.start, chunk.end)
        assert chunk.start != chunk.entry.start  # the chunk really moved
        moved += 1
        assert (pre.cache.k[0, rows] - full_cache.k[0, rows]).abs().max().item() < 1e-5
        assert (pre.cache.v[0, rows] - full_cache.v[0, rows]).abs().max().item() < 1e-5
    assert moved == len(DOCS)


def test_none_selector_is_an_approximation(smol):
    """Guards the invariant tests: without recompute the logits do differ from a full prefill."""
    smol.precompute(DOCS)
    none = smol.prefill(rag_messages(DOCS), selector="none")
    full = smol.prefill(rag_messages(DOCS), selector="full")
    assert (none.logits - full.logits).abs().max().item() > 1e-2


def test_stats_report_reuse(smol):
    smol.precompute(DOCS)
    out = smol.generate(rag_messages(DOCS), max_new_tokens=4, selector="epic", recompute_ratio=0.2)
    s = out.stats
    n_chunk_tokens = sum(len(smol.layout.chunk_token_ids(d)) for d in DOCS)
    assert (s.chunks_found, s.chunks_reused, s.chunks_computed) == (4, 4, 0)
    assert s.tokens_reused + s.tokens_recomputed == n_chunk_tokens
    assert abs(s.tokens_recomputed - 0.2 * n_chunk_tokens) <= 1
    assert s.selector == "epic" and s.recompute_ratio == 0.2
    assert out.usage.cached_tokens == s.tokens_reused


def test_detects_chunks_whose_whitespace_was_stripped_or_changed(smol):
    smol.precompute([f"\n  {d}  \n\n" for d in DOCS])  # stored with surrounding whitespace
    for sep in ("\n\n", "\n---\n", " | "):
        pre = smol.prefill(rag_messages([d.strip() for d in DOCS], sep=sep), selector="none")
        assert pre.stats.chunks_found == len(DOCS), sep


def test_text_between_chunks_is_computed_fresh(smol):
    smol.precompute(DOCS[:2])
    ctx = smol.fusion_context(rag_messages(DOCS))
    chunk_tokens = sum(c.entry.num_tokens for c in ctx.chunks)
    assert len(ctx.chunks) == 2  # DOCS[2:] were never precomputed: they are plain prompt text
    assert ctx.fresh_positions.numel() == ctx.num_positions - chunk_tokens
    assert ctx.question_positions.numel() > 5


def test_explicit_chunks_are_computed_on_demand_then_reused(smol):
    first = smol.generate(rag_messages(DOCS), max_new_tokens=2, chunks=DOCS)
    assert (first.stats.chunks_found, first.stats.chunks_computed, first.stats.chunks_reused) == (4, 4, 0)
    again = smol.generate(rag_messages(DOCS), max_new_tokens=2, chunks=DOCS)
    assert (again.stats.chunks_computed, again.stats.chunks_reused) == (0, 4)


def test_explicit_chunk_absent_from_prompt_raises(smol):
    with pytest.raises(ChunkNotFoundError, match="do not occur"):
        smol.generate(rag_messages(DOCS[:2]), chunks=DOCS[:3])


def test_empty_chunk_list_disables_fusion(smol):
    smol.precompute(DOCS)
    out = smol.generate(rag_messages(DOCS), max_new_tokens=2, chunks=[])
    assert out.stats.chunks_found == 0 and out.stats.selector is None


def test_segmented_tokenisation_differs_little_from_whole_string(smol):
    """Chunks are tokenised alone; we measure how far that is from tokenising the whole prompt."""
    smol.precompute(DOCS)
    pre = smol.prefill(rag_messages(DOCS), selector="none")
    rendered = smol.tokenizer.apply_chat_template(rag_messages(DOCS), tokenize=False, add_generation_prompt=True)
    whole = smol.tokenizer(rendered, add_special_tokens=False).input_ids
    import difflib

    ops = difflib.SequenceMatcher(a=whole, b=pre.token_ids, autojunk=False).get_opcodes()
    changed = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")
    print(f"segmented vs whole tokenisation: {changed} of {len(whole)} tokens differ")
    assert abs(len(whole) - len(pre.token_ids)) <= 2 * len(DOCS)
    assert changed <= 4 * len(DOCS)  # at most a few tokens at each chunk boundary


def test_selective_machinery_over_all_positions_equals_plain_prefill(any_engine):
    """The by-position pass (what partial recompute runs) must reproduce a plain prefill when nothing is skipped."""
    from fusionrag_integrations.model.attention import CacheAttention
    from fusionrag_integrations.model.forward import run_layers

    any_engine.precompute(DOCS)
    ctx = any_engine.fusion_context(rag_messages(DOCS))
    everything = torch.arange(ctx.num_positions)
    attention = CacheAttention(ctx.cache, AttentionMode.BY_POSITION, ctx.num_positions - 1)
    h, _ = run_layers(any_engine.model, ctx.token_ids[everything], everything, attention)
    fused = any_engine.model.logits(h[-1:])[0]
    ref, full_cache = plain_prefill(any_engine, ctx.token_ids.tolist())
    assert (fused - ref).abs().max().item() < 1e-4
    assert (ctx.cache.k - full_cache.k).abs().max().item() < 1e-4  # every layer's K, every row


def test_prompt_prefix_is_reused_exactly_on_the_next_request(smol, smol_engine, tmp_path):
    """The text before the first chunk attends only to itself: its cached KV is exact."""
    smol.precompute(DOCS)
    first = smol.prefill(rag_messages(DOCS), selector="fusionrag")
    second = smol.prefill(rag_messages(DOCS[::-1]), selector="fusionrag")  # same prefix, other chunk order
    again = smol.prefill(rag_messages(DOCS), selector="fusionrag")
    n_prefix = first.stats.prefix_tokens_reused or smol.fusion_context(rag_messages(DOCS)).chunks[0].start
    assert first.stats.prefix_tokens_reused == 0 and second.stats.prefix_tokens_reused == n_prefix > 10
    assert again.stats.prefix_tokens_reused == n_prefix
    assert (again.logits - first.logits).abs().max().item() < 1e-4
    assert (again.cache.k[:, :n_prefix] - first.cache.k[:, :n_prefix]).abs().max().item() < 1e-5
    off = engine_on(smol_engine.loaded, tmp_path / "off", prefix_cache_entries=0)
    off.precompute(DOCS)
    off.prefill(rag_messages(DOCS), selector="fusionrag")
    assert off.prefill(rag_messages(DOCS), selector="fusionrag").stats.prefix_tokens_reused == 0


def test_full_selector_never_uses_the_prefix_cache(smol):
    smol.precompute(DOCS)
    smol.prefill(rag_messages(DOCS), selector="epic")
    assert smol.prefill(rag_messages(DOCS), selector="full").stats.prefix_tokens_reused == 0


def test_a_changed_prefix_is_a_miss(smol):
    smol.precompute(DOCS)
    smol.prefill(rag_messages(DOCS), selector="none")
    other = rag_messages(DOCS)
    other[0]["content"] = "Use the passages below to answer."
    assert smol.prefill(other, selector="none").stats.prefix_tokens_reused == 0
    out = smol.generate(other, selector="cacheblend", max_new_tokens=3)  # cacheblend skips the cached prefix too
    assert (
        out.stats.prefix_tokens_reused > 0
        and out.usage.cached_tokens == out.stats.tokens_reused + out.stats.prefix_tokens_reused
    )


def test_learned_paragraphs_are_reused_by_later_prompts(smol_engine, tmp_path):
    """learn_chunks: no precompute; the first prompt's long paragraphs are kept and found in the next one."""
    engine = engine_on(smol_engine.loaded, tmp_path / "learn", learn_chunks=True, learn_min_chars=100)
    first = engine.prefill(rag_messages(DOCS), selector="none")
    assert first.stats.chunks_found == 0 and engine.counters["chunks_learned"] == len(DOCS)
    # the first passage shares its paragraph with the "Passages:" line above it: that variant only
    # matches in first position; the other three are found wherever they move
    reordered = engine.prefill(rag_messages(DOCS[::-1], question="Who founded the institute?"), selector="none")
    assert reordered.stats.chunks_found == len(DOCS) - 1 and reordered.stats.chunks_reused == len(DOCS) - 1
    assert engine.counters["chunks_computed"] == 0
    again = engine.prefill(rag_messages(DOCS, question="Where is Kellersby?"), selector="none")
    assert again.stats.chunks_found == len(DOCS)
    entry = engine.chunks.get(engine.keys_for([DOCS[1]])[0])
    rows = slice(entry.start, entry.start + entry.num_tokens)
    assert entry.context_id.startswith("seen:") and torch.equal(entry.k, first.cache.k[:, rows])
    plain = engine_on(smol_engine.loaded, tmp_path / "plain")  # off by default
    plain.prefill(rag_messages(DOCS), selector="none")
    assert plain.counters["chunks_learned"] == 0 and len(plain.chunks) == 0


def test_active_positions_is_the_sorted_union_with_or_without_a_trailing_chunk(smol):
    """The sync-free path (prompt ends with fresh tokens) and the general one agree with a set union."""
    from dataclasses import replace

    from fusionrag_integrations.fusion.placement import active_positions

    smol.precompute(DOCS)
    ctx = smol.fusion_context(rag_messages(DOCS))
    assert ctx.last_fresh_position == ctx.num_positions - 1  # a chat prompt ends with template tokens
    selected = ctx.chunk_positions[torch.randperm(ctx.chunk_positions.numel())[:17]].sort().values
    for last_is_fresh in (True, False):
        c = ctx if last_is_fresh else replace(ctx, last_fresh_position=ctx.num_positions - 2)
        expected = sorted(set(ctx.fresh_positions.tolist()) | set(selected.tolist()) | {ctx.num_positions - 1})
        assert active_positions(c, selected).tolist() == expected


def test_repeated_fresh_pieces_are_tokenised_once_with_the_same_ids(smol, monkeypatch):
    """Separators repeat between chunks: each distinct piece goes to the tokenizer once, and every piece,
    repeated or not, gets the ids its own call gives (each its own list)."""
    from fusionrag_integrations.fusion.prompt import encode_text, encode_texts

    rng = random.Random()
    pieces = [rng.choice(["\n\n", " -- ", "\n", "Question: who counted the gulls?"]) for _ in range(40)]
    batches: list[list[str]] = []
    tokenizer = smol.tokenizer
    real_call = type(tokenizer).__call__
    spy = lambda self, texts, **kw: batches.append(texts) or real_call(self, texts, **kw)  # noqa: E731
    monkeypatch.setattr(type(tokenizer), "__call__", spy)
    ids = encode_texts(tokenizer, pieces, False)
    assert len(batches) == 1 and sorted(batches[0]) == sorted(set(pieces))
    assert ids == [encode_text(smol.tokenizer, p, False) for p in pieces]
    assert len({id(x) for x in ids}) == len(ids)


def test_fresh_text_tokenised_in_one_batch_equals_piece_by_piece(smol):
    """The text between detected chunks is tokenised in one tokenizer call: each piece's ids equal its own
    call's (the BOS only on the first piece, which opens the prompt), paragraphs to learn included."""
    from fusionrag_integrations.fusion.layout import Fresh
    from fusionrag_integrations.fusion.prompt import encode_text, split_at_matches, split_paragraphs

    rng = random.Random()
    words = "harbour beacon keeper counted ships gulls at dawn the of and a 1894 Über Möwen 灯台".split()
    passages = [" ".join(rng.choice(words) for _ in range(40)) + f" passage {i}." for i in range(4)]
    smol.precompute(passages)
    paragraph = "A paragraph long enough to be learned: " + " ".join(rng.choice(words) for _ in range(60))
    between = ["\n\n", " -- ", f"\n\n{paragraph}\n\n", "\n"]
    prompt = "Context: " + "".join(p + between[i] for i, p in enumerate(passages)) + "Question: who counted?"
    layout = smol.layout
    for learn in (False, True):
        draft = layout.prepare(prompt, None, None, learn)
        assert sum(isinstance(s, str) for s in draft.segments) == 4
        parts = []
        for kind, piece in split_at_matches(prompt, layout.registry.find(prompt, "")):
            if kind == "text":
                split = split_paragraphs(piece, layout.learn_min_chars, layout._special_tokens) if learn else []
                parts += [(p, bool(lrn)) for lrn, p in split] if learn else [(piece, False)]
        fresh = [s for s in draft.segments if isinstance(s, Fresh)]
        assert [f.ids for f in fresh] == [encode_text(smol.tokenizer, p, i == 0) for i, (p, _) in enumerate(parts)]
        assert [f.learnable for f in fresh] == [p if lrn else None for p, lrn in parts]
        assert any(f.learnable for f in fresh) == learn


def test_a_pass_run_to_the_caches_end_reads_no_row_past_each_query(smol):
    """A pass as CUDA graphs record it (model/graphs.py: attention to the cache's capacity, each query stopped
    at its own position read from the device, inputs padded by repeating the last token) equals the eager
    pass, with random garbage in every row past the prompt. (Its last layer runs every row: `attend_last`
    reads keys up to max_position, which such a pass sets to the cache's end.)"""
    from fusionrag_integrations.fusion.placement import active_positions, build_context, place_chunks
    from fusionrag_integrations.fusion.recompute import pass_over
    from fusionrag_integrations.model.graphs import BUCKET, GraphCache

    smol.precompute(DOCS)
    ref = smol.fusion_context(rag_messages(DOCS))
    n, model = ref.num_positions, smol.model
    chosen = ref.chunk_positions[torch.randperm(ref.chunk_positions.numel())[:23]].sort().values
    positions = active_positions(ref, chosen)
    expected = pass_over(ref, positions)
    cache = model.new_cache(n + 3 * BUCKET)
    cache.k.normal_(0, 1e3), cache.v.normal_(0, 1e3)  # rows past the prompt: never read
    place_chunks(model, cache, ref.chunks, ref.backend)
    ctx = build_context(model, cache, ref.token_ids, ref.chunks, 0, ref.backend)
    pad = -len(positions) % BUCKET or BUCKET  # padded as a graph's inputs are: the last token repeated
    ids = torch.cat((ctx.token_ids[positions], ctx.token_ids[positions[-1:]].repeat(pad)))
    padded = torch.cat((positions, positions[-1:].repeat(pad)))
    h, _ = GraphCache(model, ref.backend, False, False, False).run_to_capacity(cache, ids, padded)
    got = model.logits(h[-1:])
    assert (got - expected).norm() / expected.norm() < 1e-5


def test_token_ids_reach_the_device_as_torch_tensor_puts_them():
    """The prompt's ids go through numpy (the fast path): the same int64 values as torch.tensor of the list,
    on fresh random ids up to the largest vocabularies, and for an empty list."""
    from fusionrag_integrations.fusion.placement import ids_on_device

    rng = random.Random()
    for n in (0, 1, 17_000):
        ids = [rng.randrange(0, 300_000) for _ in range(n)]
        got = ids_on_device(ids, torch.device("cpu"))
        assert got.dtype == torch.int64 and torch.equal(got, torch.tensor(ids, dtype=torch.int64))
