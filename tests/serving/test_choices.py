"""n answers to one prompt (OpenAI's n > 1) share one prefill: each answer decodes from its own copy of the
prompt's cache, and equals what the same request with its seed (moved by the answer's index) gives alone.
A cancelled first answer hands its place, and the prefill, to the next one."""

from __future__ import annotations

import pytest

from fusionrag_integrations import InvalidArgumentError
from fusionrag_integrations.outputs import Generation
from tests.conftest import DOCS, engine_on, rag_messages

SETTINGS = dict(max_new_tokens=10, temperature=1.0, seed=11)


@pytest.fixture
def engines(smol_engine, tmp_path):
    alone = engine_on(smol_engine.loaded, tmp_path / "c")
    shared = engine_on(smol_engine.loaded, tmp_path / "c", max_running_requests=8)
    alone.precompute(DOCS)
    return alone, shared


def count_prefills(engine, monkeypatch) -> list:
    started: list = []
    start = engine.runner.start_prefill
    monkeypatch.setattr(engine.runner, "start_prefill", lambda *a, **k: (started.append(1), start(*a, **k))[1])
    return started


def test_n_answers_share_one_prefill_and_equal_each_alone(engines, monkeypatch):
    alone, shared = engines
    prompt = rag_messages(DOCS[:2], "Who founded the Varn Institute?")
    reference = [alone.generate(prompt, **{**SETTINGS, "seed": 11 + i}) for i in range(3)]
    started = count_prefills(shared, monkeypatch)
    answers = [Generation.from_pieces(list(s)) for s in shared.stream_choices(prompt, 3, **SETTINGS)]
    assert started == [1]  # one prefill served the three answers
    assert [a.token_ids for a in answers] == [r.token_ids for r in reference]
    assert len({tuple(a.token_ids) for a in answers}) > 1  # different seeds: different samples
    for answer, ref in zip(answers, reference):
        assert answer.usage.prompt_tokens == ref.usage.prompt_tokens
        assert answer.stats.tokens_reused == ref.stats.tokens_reused > 0
    assert not shared.scheduler.running and not shared.scheduler.waiting


def test_a_cancelled_first_answer_hands_the_prefill_to_the_next(engines, monkeypatch):
    alone, shared = engines
    prompt = rag_messages(DOCS[1:3], "What colour is the lighthouse?")
    reference = [alone.generate(prompt, **{**SETTINGS, "seed": 11 + i}) for i in (1, 2)]
    started = count_prefills(shared, monkeypatch)
    with shared._lock:  # no step runs before the first answer is cancelled
        streams = shared.stream_choices(prompt, 3, **SETTINGS)
        streams[0].close()
    rest = [Generation.from_pieces(list(s)) for s in streams[1:]]
    assert [a.token_ids for a in rest] == [r.token_ids for r in reference]
    assert list(streams[0]) == [] and started == [1]


def test_n_is_checked():
    from fusionrag_integrations.inputs import check_choices

    for bad in (0, -1, 1.5, True, "2", 129):
        with pytest.raises(InvalidArgumentError, match="n "):
            check_choices(bad)
    assert check_choices(4) == 4
