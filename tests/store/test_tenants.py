"""Cache salts: chunks computed under a salt are seen, listed and deleted only under that salt, so a
client cannot learn whether another client's text is cached (vLLM's cache_salt, for chunk KV)."""

from __future__ import annotations

from tests.conftest import DOCS, engine_on, rag_messages


def test_a_salted_chunk_is_invisible_outside_its_salt(smol_engine, tmp_path):
    engine = engine_on(smol_engine.loaded, tmp_path / "cache")
    keys = engine.precompute(DOCS, cache_salt="alice")
    prompt = rag_messages(DOCS)
    alice = engine.generate(prompt, max_new_tokens=6, cache_salt="alice")
    assert alice.stats.chunks_found == len(DOCS) and alice.stats.chunks_reused == len(DOCS)
    for salt in (None, "bob"):  # neither the shared space nor another salt detects alice's chunks
        other = engine.generate(prompt, max_new_tokens=6, cache_salt=salt, learn_chunks=False)
        assert other.stats.chunks_found == 0 and other.usage.cached_tokens == 0
    assert engine.keys_for(DOCS, cache_salt="bob") == [] and engine.keys_for(DOCS) == []
    assert sorted(engine.keys_for(DOCS, cache_salt="alice")) == sorted(keys)
    assert engine.forget(keys, cache_salt="bob") == 0  # a key from elsewhere deletes nothing
    assert engine.generate(prompt, max_new_tokens=6, cache_salt="alice").stats.chunks_reused == len(DOCS)
    assert engine.forget(keys, cache_salt="alice") == len(DOCS)


def test_salted_and_shared_entries_of_one_text_are_apart_and_answer_alike(smol_engine, tmp_path):
    engine = engine_on(smol_engine.loaded, tmp_path / "cache")
    shared, salted = engine.precompute(DOCS), engine.precompute(DOCS, cache_salt="alice")
    assert not set(shared) & set(salted)  # the salt is part of the key
    prompt = rag_messages(DOCS)
    a = engine.generate(prompt, max_new_tokens=8)
    b = engine.generate(prompt, max_new_tokens=8, cache_salt="alice")
    assert a.token_ids == b.token_ids and a.stats.chunks_reused == b.stats.chunks_reused == len(DOCS)
    engine.forget(shared, cache_salt="")
    assert engine.generate(prompt, max_new_tokens=2, cache_salt="alice").stats.chunks_reused == len(DOCS)
    later = engine_on(smol_engine.loaded, tmp_path / "cache")  # a new process: salts persist with the entries
    assert later.keys_for(DOCS) == [] and sorted(later.keys_for(DOCS, cache_salt="alice")) == sorted(salted)
