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
