"""Sampler rules on constructed logits, and stop-string holding in the text stream."""

from __future__ import annotations

import torch

from fusionrag_integrations.request import SamplingParams
from fusionrag_integrations.runtime.sampling import Sampler, TextStream


def draws(params: SamplingParams, logits: torch.Tensor, n: int = 400) -> set[int]:
    sampler = Sampler(params, torch.device("cpu"))
    return {sampler(logits) for _ in range(n)}


def test_greedy_is_argmax():
    logits = torch.randn(100)
    assert draws(SamplingParams(temperature=0.0), logits, 3) == {int(logits.argmax())}


def test_top_k_limits_support():
    logits = torch.linspace(0, 1, 50)  # nearly flat: without top_k many tokens would appear
    assert draws(SamplingParams(temperature=5.0, top_k=3, seed=0), logits) <= {47, 48, 49}
    assert len(draws(SamplingParams(temperature=5.0, seed=0), logits)) > 10


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    assert draws(SamplingParams(temperature=1.0, top_p=0.75, seed=0), logits) == {0, 1}
    assert draws(SamplingParams(temperature=1.0, top_p=0.5, seed=0), logits) == {0}


class CharTokenizer:
    """ids are code points: enough to test the stream's logic without a real vocabulary."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


def run_stream(text: str, stop: tuple[str, ...]) -> tuple[list[str], bool]:
    stream = TextStream(CharTokenizer(), stop)
    pieces = []
    for ch in text:
        pieces.append(stream.push(ord(ch)))
        if stream.stopped:
            break
    else:
        pieces.append(stream.flush())
    return pieces, stream.stopped


def test_stream_holds_back_possible_stop_prefix_and_cuts_at_stop():
    pieces, stopped = run_stream("hello END world", ("END",))
    assert stopped and "".join(pieces) == "hello "
    assert pieces[6] == "" and pieces[7] == ""  # "E", "EN" held back while they could start "END"


def test_stream_releases_held_text_when_stop_does_not_follow():
    pieces, stopped = run_stream("an ENtry", ("END",))
    assert not stopped and "".join(pieces) == "an ENtry"


def test_earliest_of_several_stops_wins():
    pieces, stopped = run_stream("abc|def\n", ("\n", "|"))
    assert stopped and "".join(pieces) == "abc"


# -- numerics: any valid setting samples a real token; an invalid one is refused by name ------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fusionrag_integrations.errors import InvalidSamplingError  # noqa: E402

extreme_floats = st.one_of(
    st.floats(min_value=0.0, max_value=1e-30),  # temperatures that overflowed logits / temperature
    st.floats(min_value=0.0, max_value=1e6),
    st.sampled_from([5e-324, 1e-46, 1e-38, 1e-37, 1.0, 2.0, 1e308, float("inf"), float("nan"), -1.0]),
)
seeds = st.one_of(st.none(), st.integers(min_value=-(1 << 70), max_value=1 << 70))
logit_values = st.one_of(
    st.floats(min_value=-1e4, max_value=1e4, width=32),
    st.sampled_from([float("-inf"), -3.0e38, 3.0e38]),
)


@settings(max_examples=300, deadline=None)
@given(
    temperature=extreme_floats,
    top_p=st.one_of(extreme_floats, st.floats(min_value=0.0, max_value=1.0)),
    top_k=st.one_of(st.integers(min_value=-2, max_value=300), st.just(1 << 40)),
    seed=seeds,
    logits=st.lists(logit_values, min_size=1, max_size=64),
)
def test_sampler_gives_a_token_or_a_typed_error_for_any_setting(temperature, top_p, top_k, seed, logits):
    try:
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    except InvalidSamplingError:
        valid_t = temperature >= 0 and temperature == temperature and temperature != float("inf")
        valid_p = 0 < top_p <= 1
        valid_seed = seed is None or -(1 << 63) <= seed < 1 << 64
        assert not (valid_t and valid_p and top_k >= 0 and valid_seed)  # refused only when something is out of range
        return
    row = torch.tensor(logits, dtype=torch.float32)
    token = Sampler(params, torch.device("cpu"))(row)
    assert 0 <= token < len(logits)
    if torch.isfinite(row).any():
        assert torch.isfinite(row[token]) or row[token] == row.max()  # never a -inf token while a finite one exists
    if temperature == 0 or top_k == 1:
        assert row[token] == row.max()


def test_a_vanishing_temperature_samples_the_likeliest_token():
    """1e-37 made logits / temperature overflow to inf and softmax NaN (the scheduler thread died)."""
    logits = torch.randn(1000) * 10
    for t in (1e-37, 1e-38, 5e-324):
        assert draws(SamplingParams(temperature=t, seed=1), logits, 20) == {int(logits.argmax())}


def test_a_vanishing_top_p_keeps_the_likeliest_token():
    logits = torch.randn(1000)
    for p in (1e-46, 5e-324):
        assert draws(SamplingParams(temperature=1.0, top_p=p, seed=3), logits, 20) == {int(logits.argmax())}


def test_seeds_outside_64_bits_are_refused_by_name():
    import pytest

    for seed in (1 << 64, -(1 << 63) - 1):
        with pytest.raises(InvalidSamplingError, match="seed"):
            SamplingParams(seed=seed)
    for seed in ((1 << 64) - 1, -(1 << 63)):  # the edges work, and equal seeds draw equally
        a, b = Sampler(SamplingParams(temperature=1.0, seed=seed), torch.device("cpu")), None
        b = Sampler(SamplingParams(temperature=1.0, seed=seed), torch.device("cpu"))
        logits = torch.randn(500)
        assert [a(logits) for _ in range(5)] == [b(logits) for _ in range(5)]


def test_a_minus_inf_logit_is_never_sampled_at_a_huge_temperature():
    """-inf must stay -inf: turned into the lowest finite float, a temperature of 1e308 flattened it into
    a sampleable token (found by the property test above)."""
    params = SamplingParams(temperature=1e308, top_p=8.2e-31, top_k=1 << 40)
    row = torch.tensor([float("-inf"), 0.0])
    assert {Sampler(params, torch.device("cpu"))(row) for _ in range(50)} == {1}
