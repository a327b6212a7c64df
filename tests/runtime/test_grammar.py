"""Constrained decoding: the bitmask apply equals its definition, answers parse as their format (greedy
and sampled, the real model), rows with and without grammars batch together with the same answers as
alone, and a grammar that does not compile is refused before any compute."""

from __future__ import annotations

import json
import re
import threading
from typing import Annotated

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from fusionrag_integrations.errors import InvalidSamplingError
from fusionrag_integrations.request import SamplingParams
from fusionrag_integrations.response_format import ResponseFormat
from fusionrag_integrations.runtime import grammar
from fusionrag_integrations.runtime.grammar import apply_bitmask


class Person(BaseModel):  # bounded: a 135M model can repeat itself inside an unbounded string or list
    name: str = Field(max_length=20)
    age: int
    hobbies: list[Annotated[str, Field(max_length=20)]] = Field(max_length=3)


PERSON_PROMPT = [{"role": "user", "content": "Describe a person called Alice (30, likes chess) as JSON."}]


@pytest.mark.parametrize("seed", range(4))
def test_bitmask_apply_equals_its_definition(seed):
    gen = torch.Generator().manual_seed(seed)
    rows, vocab, width = 3, 100 + seed, 3  # 3 words = 96 bits: tokens from 96 on are beyond the mask
    bitmask = torch.randint(-(1 << 31), (1 << 31) - 1, (rows, width), generator=gen, dtype=torch.int64).to(torch.int32)
    logits = torch.randn(rows, vocab, generator=gen) * 3 + 1
    got = apply_bitmask(logits.clone(), bitmask)
    for r in range(rows):
        for t in range(vocab):
            allowed = t < 32 * width and (int(bitmask[r, t // 32]) >> (t % 32)) & 1
            assert got[r, t] == (logits[r, t] if allowed else float("-inf"))


def person_params(**kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=80, response_format=Person, **kw)


def test_json_schema_answers_validate_greedy_and_sampled(smol):
    for params in (person_params(), person_params(temperature=1.0, seed=3), person_params(temperature=1.3, seed=9)):
        out = smol.generate(PERSON_PROMPT, sampling=params, chunks=[])
        assert out.finish_reason == "stop", out.text
        Person.model_validate_json(out.text)  # raises unless the answer is the schema's


def test_json_object_regex_and_choice(smol):
    obj = smol.generate("Write a JSON object about Paris:", max_new_tokens=60, response_format={"type": "json_object"},
                        chunks=[], temperature=0.9, seed=1)  # fmt: skip
    assert obj.finish_reason == "stop" and isinstance(json.loads(obj.text), dict)
    pattern = r"[0-9]{3}-[0-9]{4}"
    phone_format = ResponseFormat.regex(pattern)
    phone_params = SamplingParams(max_new_tokens=20, response_format=phone_format)
    phone = smol.generate("Call me at", chunks=[], sampling=phone_params)
    assert re.fullmatch(pattern, phone.text) and phone.finish_reason == "stop"
    options = ["positive", "negative", 'neutral "quoted"']
    for seed in range(3):
        pick = smol.generate(
            "The review 'great film' is",
            sampling=SamplingParams(
                max_new_tokens=10, temperature=1.0, seed=seed, response_format=ResponseFormat.choice(options)
            ),
            chunks=[],
        )
        assert pick.text in options and pick.finish_reason == "stop"


def test_a_grammar_that_does_not_compile_is_refused_before_compute(smol):
    with pytest.raises(InvalidSamplingError, match="does not compile"):
        smol.stream("x", sampling=SamplingParams(response_format=ResponseFormat.regex("[0-9")))
    with pytest.raises(InvalidSamplingError, match="does not compile"):
        smol.stream("x", sampling=SamplingParams(response_format=ResponseFormat.grammar("start: undefined_rule")))
    with pytest.raises(InvalidSamplingError, match="json_schema"):
        SamplingParams(response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(InvalidSamplingError, match="vocabulary"):
        smol.stream("x", logit_bias={10**7: 5})


def test_rows_with_and_without_grammars_batch_with_alone_answers(smol, monkeypatch):
    settings = [
        dict(sampling=person_params()),
        dict(max_new_tokens=24),
        dict(sampling=SamplingParams(max_new_tokens=12, response_format=ResponseFormat.regex(r"(yes|no), as [a-z ]+"))),
        dict(max_new_tokens=24, temperature=0.8, seed=4),
    ]
    prompts = [PERSON_PROMPT, "The capital of France is", "Is the sky blue? Answer:", "Once upon a time"]
    alone = [smol.generate(p, chunks=[], **s) for p, s in zip(prompts, settings)]
    batches: list[tuple[int, int]] = []
    real = grammar.constrain

    def spy(logits, constraints):
        batches.append((logits.shape[0], sum(c is not None for c in constraints)))
        return real(logits, constraints)

    monkeypatch.setattr("fusionrag_integrations.runtime.executor.constrain", spy)
    gate = threading.Barrier(len(prompts))  # submitted together: the loop decodes them in one batch

    def run(i: int, box: dict) -> None:
        gate.wait()
        box[i] = smol.generate(prompts[i], chunks=[], **settings[i])

    box: dict = {}
    threads = [threading.Thread(target=run, args=(i, box)) for i in range(len(prompts))]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    for i, want in enumerate(alone):
        assert box[i].token_ids == want.token_ids, f"request {i} changed when batched"
    assert any(rows > constrained > 0 for rows, constrained in batches), batches  # mixed batches happened


def test_logprobs_are_the_raw_distribution(smol):
    prompt = "The capital of France is"
    pre = smol.prefill(prompt, chunks=[])
    want = torch.log_softmax(pre.logits.float(), dim=-1)
    out = smol.generate(prompt, chunks=[], max_new_tokens=6, logprobs=3)
    assert len(out.logprobs) == len(out.token_ids)
    first = out.logprobs[0]
    assert first.token_id == out.token_ids[0] == int(torch.argmax(want))
    assert abs(first.logprob - float(want[first.token_id])) < 1e-4
    assert [t for t, _ in first.top] == torch.topk(want, 3).indices.tolist()
    for lp in out.logprobs:  # greedy: the chosen token is the likeliest
        assert lp.top[0][0] == lp.token_id and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
    assert smol.generate(prompt, chunks=[], max_new_tokens=3).logprobs is None
    constrained = smol.generate(PERSON_PROMPT, chunks=[], sampling=person_params(logprobs=0))
    assert all(lp.top == () and lp.logprob <= 0 for lp in constrained.logprobs)


def test_logit_bias_and_min_p(smol):
    prompt = "The capital of France is"
    plain = smol.generate(prompt, chunks=[], max_new_tokens=3)
    forced = smol.tokenizer.encode(" banana", add_special_tokens=False)[0]
    biased = smol.generate(prompt, chunks=[], max_new_tokens=3, logit_bias={str(forced): 100})
    assert plain.token_ids[0] != forced and biased.token_ids == [forced] * 3
    logits = torch.tensor([2.0, 1.9, 0.0, -1.0, -3.0])  # probs ~ .44 .40 .06 .02 .003
    from fusionrag_integrations.runtime.sampling import Sampler

    probs = torch.softmax(logits, -1)
    sampler = Sampler(SamplingParams(temperature=1.0, min_p=0.1, seed=0), torch.device("cpu"))
    seen = {sampler(logits) for _ in range(300)}
    assert seen == {i for i in range(5) if probs[i] >= 0.1 * probs.max()} == {0, 1, 2}


def test_objects_without_additional_properties_are_closed():
    class Pet(BaseModel):
        kind: str

    class Owner(BaseModel):
        pets: list[Pet]
        extra: dict[str, int]

    schema = grammar.closed_objects(Owner.model_json_schema())
    assert schema["additionalProperties"] is False and schema["$defs"]["Pet"]["additionalProperties"] is False
    assert schema["properties"]["extra"]["additionalProperties"] == {"type": "integer"}  # explicit: kept
    assert "additionalProperties" not in schema["properties"]["pets"]  # an array, no properties of its own


# bounded JSON schemas: every string, array and integer has a bound, so every answer ends within the budget
_scalars = st.one_of(
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(1, 6)),
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(0, 99),
    ),
    st.just({"type": "boolean"}),
    st.builds(
        lambda values: {"enum": values},
        st.lists(st.sampled_from(["red", "blue", 3, True, None]), min_size=1, max_size=3, unique_by=repr),
    ),
    st.builds(
        lambda n: {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": n},
        st.integers(0, 2),
    ),
)
_KEYS = st.lists(st.sampled_from(["name", "size", "kind", "note", "tags"]), min_size=1, max_size=3, unique=True)


def _object(values: st.SearchStrategy) -> st.SearchStrategy:
    return _KEYS.flatmap(
        lambda keys: st.tuples(*[values for _ in keys]).map(
            lambda subs: {"type": "object", "properties": dict(zip(keys, subs)), "required": list(keys)}
        )
    )


SCHEMAS = _object(st.one_of(_scalars, _object(_scalars)))  # depth two at most


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=SCHEMAS, seed=st.integers(0, 1000))
def test_answers_to_random_schemas_are_valid_json_by_construction(smol, schema, seed):
    """20 hypothesis-generated schemas (depth <= 2, every value bounded), sampled answers: each parses and
    validates against its schema, and ends by the grammar (not the token limit)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    out = smol.generate("Fill in the JSON.", max_new_tokens=200, response_format=fmt, chunks=[], temperature=1.0,
                        seed=seed)  # fmt: skip
    assert out.finish_reason == "stop", (schema, out.text)
    jsonschema.validate(json.loads(out.text), schema)
