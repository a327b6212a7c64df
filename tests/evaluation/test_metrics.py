"""Metrics on known values."""

from __future__ import annotations

import math

import torch

from fusionrag_integrations.evaluation.metrics import (
    exact_match,
    f1_score,
    kl_divergence,
    normalize_answer,
    prefix_agreement,
    rouge_l,
)


def test_squad_normalisation_and_first_line():
    assert normalize_answer("The  Exeter College!") == "exeter college"
    assert exact_match("Exeter College.\nBecause ...", ["exeter college"]) == 1.0
    assert exact_match("Oxford", ["Exeter College"]) == 0.0


def test_f1_is_word_overlap_max_over_answers():
    assert f1_score("Exeter College in Oxford", ["Exeter College"]) == 2 * (2 / 4) * 1 / (2 / 4 + 1)
    assert f1_score("Paris", ["London", "paris"]) == 1.0
    assert f1_score("", ["x"]) == 0.0


def test_kl_is_zero_for_identical_and_positive_otherwise():
    logits = torch.randn(100)
    assert abs(kl_divergence(logits, logits)) < 1e-12
    assert kl_divergence(logits, logits + torch.randn(100)) > 0.01
    # P = (1/2, 1/2), Q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3)
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2 / 3)
    assert abs(kl_divergence(torch.zeros(2), torch.tensor([0.0, math.log(3.0)])) - expected) < 1e-7


def test_prefix_agreement_stops_at_first_divergence():
    assert prefix_agreement([1, 2, 3, 4], [1, 2, 9, 4]) == 0.5
    assert prefix_agreement([1, 2], [1, 2, 3]) == 1.0
    assert prefix_agreement([], []) == 1.0


def test_rouge_l():
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert 0.0 < rouge_l("the cat sat on the mat", "a cat sat") < 1.0
