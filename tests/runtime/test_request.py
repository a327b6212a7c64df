"""Settings objects and keyword arguments are two spellings of one request."""

from __future__ import annotations

import pytest

from fusionrag_integrations import FusionParams, InvalidArgumentError, InvalidSamplingError, SamplingParams
from fusionrag_integrations.runtime.state import Request
from tests.conftest import DOCS, rag_messages


def test_keywords_override_fields_of_the_settings_objects():
    request = Request.build("hi", sampling=SamplingParams(max_new_tokens=9, seed=3), temperature=0.5, selector="epic")
    assert (request.sampling.max_new_tokens, request.sampling.seed, request.sampling.temperature) == (9, 3, 0.5)
    assert request.fusion.selector == "epic" and request.fusion.chunks is None


def test_bad_settings_fail_on_construction():
    with pytest.raises(InvalidArgumentError, match="unexpected argument"):
        Request.build("hi", max_tokens=5)  # the engine's name is max_new_tokens
    with pytest.raises(InvalidSamplingError, match="top_p"):
        Request.build("hi", top_p=0.0)
    with pytest.raises(InvalidArgumentError, match="learn_chunks"):
        FusionParams(learn_chunks="yes")
    with pytest.raises(InvalidArgumentError, match="chunks"):
        FusionParams(chunks="one text, not a list")


def test_objects_and_keywords_give_the_same_generation(smol):
    smol.precompute(DOCS)
    by_keywords = smol.generate(rag_messages(DOCS), max_new_tokens=12, selector="epic", recompute_ratio=0.2)
    by_objects = smol.generate(
        rag_messages(DOCS),
        sampling=SamplingParams(max_new_tokens=12),
        fusion=FusionParams(selector="epic", recompute_ratio=0.2),
    )
    assert by_objects.text == by_keywords.text and by_objects.token_ids == by_keywords.token_ids
    assert by_objects.stats.tokens_recomputed == by_keywords.stats.tokens_recomputed > 0
