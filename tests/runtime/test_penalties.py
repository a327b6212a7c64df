"""Repetition penalties: the tensor path equals the definitions written out token by token, off means
untouched, and they reach generation (in process, batched, and over HTTP)."""

from __future__ import annotations

import random

import pytest
import torch

from fusionrag_integrations.errors import InvalidSamplingError
from fusionrag_integrations.request import SamplingParams
from fusionrag_integrations.runtime.penalties import Penalties, reference_penalties
from fusionrag_integrations.runtime.sampling import Sampler

COUNTING = "Repeat after me: la la la la la la la la la la la la"


@pytest.mark.parametrize("seed", range(5))
def test_penalised_logits_equal_the_definitions(seed):
    rng = random.Random(seed)
    bias = {rng.randrange(50): rng.uniform(-100, 100) for _ in range(3)}
    params = SamplingParams(presence_penalty=rng.uniform(-2, 2), frequency_penalty=rng.uniform(-2, 2),
                            repetition_penalty=rng.uniform(0.5, 3), logit_bias=bias)  # fmt: skip
    vocab, prompt = 50, [rng.randrange(50) for _ in range(12)]
    penalties, generated = Penalties(params, prompt, torch.device("cpu")), []
    for _ in range(6):
        logits = torch.randn(vocab, generator=torch.Generator().manual_seed(rng.randrange(1 << 30))) * 4
        got = penalties.apply(logits)
        want = torch.tensor(reference_penalties(logits.tolist(), prompt, generated, params))
        assert torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want) < 1e-6
        token = rng.randrange(vocab)
        penalties.accept(token)
        generated.append(token)


def test_penalties_off_leave_sampling_untouched():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=0.9, seed=5)
    assert Sampler(params, torch.device("cpu"), [1, 2, 3]).penalties is None
    assert [Sampler(params, torch.device("cpu"))(logits) for _ in range(3)] == [
        Sampler(SamplingParams(temperature=0.9, seed=5), torch.device("cpu"))(logits) for _ in range(3)
    ]


@pytest.mark.parametrize("bad", [{"presence_penalty": 2.5}, {"frequency_penalty": float("nan")},
                                 {"repetition_penalty": 0}, {"repetition_penalty": True}])  # fmt: skip
def test_bad_penalties_are_refused(bad):
    with pytest.raises(InvalidSamplingError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_penalties_change_greedy_output_and_batched_equals_alone(smol):
    plain = smol.generate(COUNTING, max_new_tokens=16, temperature=0.0)
    settings = {"max_new_tokens": 16, "temperature": 0.0, "frequency_penalty": 1.5, "repetition_penalty": 1.3}
    alone = smol.generate(COUNTING, **settings)
    assert alone.token_ids != plain.token_ids
    assert max(map(alone.token_ids.count, alone.token_ids)) < max(map(plain.token_ids.count, plain.token_ids))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:  # three at once: decoded in one batch
        together = list(pool.map(lambda _: smol.generate(COUNTING, **settings), range(3)))
    assert all(g.token_ids == alone.token_ids for g in together)
