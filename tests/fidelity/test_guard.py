"""The fidelity guard: an escalated request is answered by full attention, an unflagged one exactly as
without the guard; its predictor ranks and its controller plans as their definitions say."""

from __future__ import annotations

import itertools
import random

import pytest

from fusionrag_integrations.config import EngineConfig, FusionConfig
from fusionrag_integrations.errors import InvalidArgumentError, InvalidConfigError
from fusionrag_integrations.evaluation.harness import teacher_forced
from fusionrag_integrations.evaluation.metrics import kl_divergence
from fusionrag_integrations.fidelity.controller import NEVER, FidelityController, plan_threshold
from fusionrag_integrations.fidelity.predictor import fit_predictor, roc_auc
from fusionrag_integrations.fidelity.signals import SIGNALS
from fusionrag_integrations.request import FusionParams
from tests.conftest import DOCS, engine_on, rag_messages
from tests.fidelity.test_shadow import measured

QUESTION = "Who founded the Varn Institute?"


def guarded_engine(smol_engine, tmp_path, threshold: float, **config):
    fusion = FusionConfig(fidelity="guarded", guard_threshold=threshold, **config.pop("fusion", {}))
    engine = engine_on(smol_engine.loaded, tmp_path / f"cache{threshold}", fusion=fusion, **config)
    engine.precompute(DOCS)
    return engine


def test_an_escalated_request_answers_as_full_attention(smol_engine, tmp_path):
    engine = guarded_engine(smol_engine, tmp_path, threshold=0.0)  # every fused request is flagged
    messages = rag_messages(DOCS, QUESTION)
    guarded = engine.generate(messages, max_new_tokens=16, temperature=0.0)
    full = engine.generate(messages, max_new_tokens=16, temperature=0.0, selector="full")
    fused = engine.generate(messages, max_new_tokens=16, temperature=0.0, fidelity="off")
    assert guarded.token_ids == full.token_ids
    assert guarded.stats.escalated and 0.0 < guarded.stats.guard_score < 1.0
    assert guarded.stats.selector == "full" and guarded.stats.tokens_reused == 0
    assert not fused.stats.escalated and fused.stats.guard_score is None and fused.stats.tokens_reused > 0
    assert engine.fidelity_report().guard["escalated"] == 1


def test_an_unflagged_request_answers_as_without_the_guard(smol_engine, tmp_path):
    engine = guarded_engine(smol_engine, tmp_path, threshold=NEVER)
    messages = rag_messages(DOCS, QUESTION)
    guarded = engine.generate(messages, max_new_tokens=16, temperature=0.0)
    plain = engine.generate(messages, max_new_tokens=16, temperature=0.0, fidelity="off")
    assert guarded.token_ids == plain.token_ids and guarded.stats.tokens_reused > 0
    assert not guarded.stats.escalated and guarded.stats.guard_score is not None


def test_a_sampled_flagged_request_is_explored_and_carries_its_signals(smol_engine, tmp_path):
    """explore=1: a flagged request that the shadow samples is answered fused and measured."""
    engine = guarded_engine(smol_engine, tmp_path, threshold=0.0, fidelity_sample_rate=1.0,
                            fusion={"guard_explore": 1.0})  # fmt: skip
    gen = engine.generate(rag_messages(DOCS, QUESTION), max_new_tokens=8, temperature=0.0)
    (sample,) = measured(engine, 1).samples
    assert not gen.stats.escalated and sample.score == gen.stats.guard_score and sample.weight == 1.0
    assert set(sample.signals) == set(SIGNALS)
    assert 0.0 <= sample.signals["missed_attention"] <= 1.0 and sample.signals["standalone"] == 1.0
    assert sample.signals["recompute_share"] == pytest.approx(sample.recompute_share)


def test_an_escalated_sampled_request_is_judged_on_full_attentions_answer(smol_engine, tmp_path):
    """Escalated, the answer is full attention's; the fused prefill that ran first is kept and fed that
    answer (8 positions a step: the step's spare budget): its figures equal the harness's fused prefill
    judged by teacher forcing on the same tokens."""
    engine = guarded_engine(smol_engine, tmp_path, threshold=0.0, fidelity_sample_rate=1.0, max_prefill_tokens=8,
                            fusion={"guard_explore": 1e-9, "recompute_ratio": 0.15})  # fmt: skip
    questions = (QUESTION, "What colour is the lighthouse?")
    gens = [engine.generate(rag_messages(DOCS, q), max_new_tokens=10, temperature=0.0) for q in questions]
    report = measured(engine, len(questions))
    assert engine.fidelity_report().guard["escalated"] == len(questions)
    for question, gen, sample in zip(questions, gens, report.samples):
        messages = rag_messages(DOCS, question)
        full = engine.prefill(messages, selector="full")
        fused = engine.prefill(messages, recompute_ratio=0.15)
        assert gen.stats.escalated and gen.token_ids == engine.generate(
            messages, max_new_tokens=10, temperature=0.0, selector="full").token_ids  # fmt: skip
        assert sample.escalated and sample.weight == 1.0 and sample.score == gen.stats.guard_score
        assert sample.selector == fused.stats.selector != "full" and sample.ratio == 0.15
        assert sample.recompute_share == pytest.approx(fused.stats.tokens_recomputed / (
            fused.stats.tokens_recomputed + fused.stats.tokens_reused))  # fmt: skip
        kl = kl_divergence(full.logits, fused.logits)
        assert kl > 0 and abs(sample.kl - kl) / kl < 0.01
        assert sample.top1 == float(full.logits.argmax() == fused.logits.argmax())
        judged = teacher_forced(engine, messages, gen.token_ids, judge={"recompute_ratio": 0.15})
        assert abs(sample.agreement - judged) < 1e-9 and sample.tokens == len(gen.token_ids)
        assert gen.stats.fidelity == sample


def test_the_controller_sets_the_base_ratio(smol_engine, tmp_path):
    fusion = FusionConfig(fidelity_target=0.9, recompute_ratio=0.16, ratio_bounds=(0.1, 0.3), guard_threshold=NEVER)
    engine = engine_on(smol_engine.loaded, tmp_path / "cache", fusion=fusion, fidelity_sample_rate=1.0)
    engine.precompute(DOCS)
    gen = engine.generate(rag_messages(DOCS, QUESTION), max_new_tokens=4, temperature=0.0)
    assert gen.stats.recompute_ratio == 0.15  # the nearest rung inside the bounds
    assert engine.fidelity_report().guard["target"] == 0.9


def test_settings_are_checked():
    with pytest.raises(InvalidConfigError, match="fidelity_sample_rate"):
        EngineConfig(fusion=FusionConfig(fidelity_target=0.9))
    with pytest.raises(InvalidConfigError, match="ratio_bounds"):
        FusionConfig(ratio_bounds=(0.5, 0.1))
    with pytest.raises(InvalidArgumentError, match="fidelity"):
        FusionParams(fidelity="always")


def test_roc_auc_equals_the_pairwise_count():
    rng = random.Random(4)
    for _ in range(20):
        scores = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(30)]
        labels = [rng.random() < 0.4 for _ in range(30)]
        if all(labels) or not any(labels):
            continue
        pairs = [(p, n) for p, n in itertools.product(scores, scores)]
        pos = [s for s, y in zip(scores, labels) if y]
        neg = [s for s, y in zip(scores, labels) if not y]
        pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
        assert roc_auc(scores, labels) == pytest.approx(sum(pairs) / len(pairs))


def test_the_predictor_learns_a_signal_that_decides_divergence():
    """Divergence driven by missed_attention (plus noise) and nothing else: held-out AUC near the noise's."""
    rng = random.Random(5)

    def draw(n: int):
        rows, agreements = [], []
        for _ in range(n):
            missed = rng.random()
            rows.append({"missed_attention": missed, "entropy": rng.gauss(2, 1), "margin": rng.random()})
            agreements.append(1.0 - missed + rng.gauss(0, 0.1))
        return rows, agreements

    rows, agreements = draw(300)
    model = fit_predictor(rows, agreements, label=0.5, source="test")
    test_rows, test_agreements = draw(300)
    scores = [model.score(r) for r in test_rows]
    assert roc_auc(scores, [a < 0.5 for a in test_agreements]) > 0.9
    assert model.score({"missed_attention": 0.95}) > 0.9 > 0.1 > model.score({"missed_attention": 0.05})
    assert model.score({}) == pytest.approx(model.score({"missed_attention": model.mean[2]}))  # missing: its mean


def lower_bound(values, weights):
    """One-sided 95% lower bound of a weighted mean, the effective sample size Kish's."""
    total = sum(weights)
    mean = sum(w * v for v, w in zip(values, weights)) / total
    n_eff = total**2 / sum(w * w for w in weights)
    variance = sum(w * (v - mean) ** 2 for v, w in zip(values, weights)) / total * n_eff / max(n_eff - 1, 1)
    return mean - 1.645 * (variance / n_eff) ** 0.5


def brute_force(observations, target):
    """The highest threshold (among the scores, or never) whose served agreement's lower bound meets the
    target; escalating every observation serves 1.0."""
    weights = [w for _, _, w in observations]
    scores = sorted({s for s, _, _ in observations}, reverse=True)
    for t in [NEVER] + scores:
        served = [1.0 if s >= t else a for s, a, _ in observations]
        low = 1.0 if t == scores[-1] else lower_bound(served, weights)
        if low >= target - 1e-12:
            return t, low
    raise AssertionError("escalating everything always meets the target")


def test_the_plan_is_the_highest_threshold_that_meets_the_target():
    rng = random.Random(6)
    for _ in range(200):
        obs = [(rng.choice([0.2, 0.5, rng.random()]), rng.random(), rng.choice([1.0, 10.0])) for _ in range(25)]
        target = rng.uniform(0.4, 1.0)
        plan = plan_threshold(obs, target)
        threshold, low = brute_force(obs, target)
        assert plan.threshold == threshold and plan.served_low == pytest.approx(low)
        total = sum(w for _, _, w in obs)
        assert plan.escalated == pytest.approx(sum(w for s, _, w in obs if s >= plan.threshold) / total)


def test_the_controller_raises_the_ratio_when_escalating_costs_more_and_lowers_it_when_safe():
    up = FidelityController(0.95, 0.15, 0.5, (0.1, 0.3), min_samples=30)
    for i in range(30):  # half the requests diverge badly: escalating them costs 0.5 x 0.85 > 0.2 - 0.15
        up.observe(score=i / 30, agreement=0.2 if i >= 15 else 1.0, weight=1.0, ratio=0.15)
    assert up.ratio == 0.2 and up.moves == 1
    down = FidelityController(0.5, 0.15, 0.5, (0.1, 0.3), min_samples=30)
    for i in range(30):
        down.observe(score=i / 30, agreement=0.9 + 0.003 * (i % 3), weight=1.0, ratio=0.15)
    assert down.ratio == 0.1 and down.threshold == NEVER
    down.observe(score=0.1, agreement=0.0, weight=1.0, ratio=0.15)  # measured at the old rung: ignored
    assert down.moves == 1 and down.plan is not None


def test_the_controller_plans_over_recent_samples_and_forgets_old_costs():
    fixed = FidelityController(0.9, 0.15, 0.5, (0.15, 0.15), min_samples=30, window=60)
    for i in range(60):
        fixed.observe(score=i / 60, agreement=0.3, weight=1.0, ratio=0.15)
    for i in range(60):  # the traffic got easy: the window holds only the easy samples
        fixed.observe(score=i / 60, agreement=0.97 + 0.01 * (i % 3), weight=1.0, ratio=0.15)
    assert fixed.plan.unguarded == pytest.approx(0.98) and fixed.threshold == NEVER

    c = FidelityController(0.9, 0.15, 0.5, (0.1, 0.15), min_samples=30, window=60, memory=3)
    easy = lambda: c.observe(score=0.5, agreement=0.99, weight=1.0, ratio=c.ratio)  # noqa: E731
    hard = lambda i: c.observe(score=i / 30, agreement=0.5, weight=1.0, ratio=c.ratio)  # noqa: E731
    for _ in range(30):
        easy()
    assert c.ratio == 0.1  # nothing to escalate, bound clear: try the rung down
    for i in range(30):
        hard(i)
    assert c.ratio == 0.15 and 0.1 in c.costs  # escalating at 0.1 cost more than 0.15 did: back
    for _ in range(30 + 10 * (c.memory - 2)):
        easy()
    assert c.ratio == 0.15  # 0.1's cost is still trusted
    for _ in range(10):
        easy()
    assert c.ratio == 0.1  # forgotten after `memory` plans: tried again


def test_the_guard_refits_on_schedule_also_once_its_sample_store_is_full(monkeypatch):
    from fusionrag_integrations.fidelity import guard as guard_module
    from fusionrag_integrations.fidelity.calibrated import shipped_predictor
    from fusionrag_integrations.fidelity.guard import FidelityGuard
    from fusionrag_integrations.fidelity.shadow import FidelitySample

    monkeypatch.setattr(guard_module, "KEEP", 120)
    guard = FidelityGuard(shipped_predictor(), 0.7, 0.1)
    refits = []
    monkeypatch.setattr(guard, "refit", lambda samples: refits.append(len(samples)))
    for i in range(400):
        guard.observe(FidelitySample(kl=0.1, top1=1.0, agreement=(i % 5) / 4, tokens=4, selector="hybrid", ratio=0.15,
                                     recompute_share=0.15, kv_format="native", precompute="standalone", model="m",
                                     signals={"entropy": float(i % 7)}))  # fmt: skip
    assert refits == [100, 120, 120, 120, 120, 120, 120]  # at 100, 150, ... 400: every 50, never every sample
