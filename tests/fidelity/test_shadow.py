"""The fidelity shadow measures what the offline harness measures, for the answers actually served,
without holding any answer back; its estimate survives a restart."""

from __future__ import annotations

import json
import time

import pytest

from fusionrag_integrations.evaluation.harness import teacher_forced
from fusionrag_integrations.evaluation.metrics import kl_divergence
from fusionrag_integrations.fidelity.report import FidelityEstimates
from fusionrag_integrations.fidelity.shadow import FidelitySample
from tests.conftest import DOCS, engine_on, rag_messages

QUESTIONS = ("Who founded the Varn Institute?", "What colour is the lighthouse?", "Where did Amelia Varn study?")


def measured(engine, count: int, timeout: float = 300.0):
    """The report once `count` samples are in (shadows run when the loop is otherwise idle)."""
    deadline = time.monotonic() + timeout  # a generous bound on a loaded 2-core machine: it did not hang
    while time.monotonic() < deadline:
        report = engine.fidelity_report()
        if len(report.samples) >= count and report.pending == 0:
            return report
        time.sleep(0.05)
    raise AssertionError(f"shadows did not finish: {engine.fidelity_report()}")


@pytest.fixture
def sampled(smol_engine, tmp_path):
    engine = engine_on(smol_engine.loaded, tmp_path / "cache", fidelity_sample_rate=1.0)
    engine.precompute(DOCS)
    return engine


def test_shadow_figures_equal_the_harness_for_the_same_answers(sampled):
    """Per request: KL and top-1 against the harness's full and fused prefills of the same prompt, and
    teacher-forced agreement against the harness's decode-step path (the shadow prefills instead)."""
    gens = [sampled.generate(rag_messages(DOCS, q), max_new_tokens=12, temperature=0.0, recompute_ratio=0.15)
            for q in QUESTIONS]  # fmt: skip
    report = measured(sampled, len(QUESTIONS))
    assert [s.tokens for s in report.samples] == [len(g.token_ids) for g in gens]
    agreements = []
    for question, gen, sample in zip(QUESTIONS, gens, report.samples):
        messages = rag_messages(DOCS, question)
        full = sampled.prefill(messages, selector="full").logits
        fused = sampled.prefill(messages, recompute_ratio=0.15).logits
        kl = kl_divergence(full, fused)
        assert kl > 0 and abs(sample.kl - kl) / kl < 0.01
        assert sample.top1 == float(full.argmax() == fused.argmax())
        agreement = teacher_forced(sampled, messages, gen.token_ids, fused)
        assert abs(sample.agreement - agreement) < 1e-9
        assert gen.stats.fidelity == sample  # the caller's stats object, filled in place
        assert sample.selector == gen.stats.selector and sample.ratio == 0.15
        assert 0 < sample.recompute_share < 1 and sample.precompute == "standalone"
        agreements.append(agreement)
    (estimate,) = report.estimates
    assert estimate.n == len(QUESTIONS)
    assert estimate.agreement.mean == pytest.approx(sum(agreements) / len(agreements))
    assert estimate.agreement.low <= estimate.agreement.mean <= estimate.agreement.high


def test_full_attention_and_chunkless_requests_are_not_measured(sampled):
    sampled.generate(rag_messages(DOCS), max_new_tokens=4, selector="full")
    sampled.generate("No chunks in this prompt.", max_new_tokens=4)
    sampled.generate(rag_messages(DOCS), max_new_tokens=4, temperature=0.0)
    report = measured(sampled, 1)
    assert len(report.samples) == 1 and report.samples[0].selector != "full"


def test_rate_zero_measures_nothing_and_writes_nothing(smol_engine, tmp_path):
    engine = engine_on(smol_engine.loaded, tmp_path / "cache")
    engine.precompute(DOCS)
    gen = engine.generate(rag_messages(DOCS), max_new_tokens=4)
    report = engine.fidelity_report()
    assert gen.stats.fidelity is None and report.samples == [] and report.estimates == []
    assert not (tmp_path / "cache" / "fidelity.json").exists()


def test_the_estimate_survives_a_restart_and_a_damaged_file_starts_over(sampled, smol_engine, tmp_path):
    sampled.generate(rag_messages(DOCS), max_new_tokens=6, temperature=0.0)
    before = measured(sampled, 1)
    again = engine_on(smol_engine.loaded, tmp_path / "cache", fidelity_sample_rate=1.0)
    assert again.fidelity_report().estimates == before.estimates
    assert again.fidelity_report().samples == before.samples
    path = tmp_path / "cache" / "fidelity.json"
    state = json.loads(path.read_text())
    state["groups"][0][1]["kl_buckets"] = [1]  # a foreign or damaged file is not used
    path.write_text(json.dumps(state))
    assert FidelityEstimates(path).estimates() == []
    path.write_text("{not json")
    assert FidelityEstimates(path).estimates() == []


def test_a_failing_shadow_drops_its_sample_and_no_answer(sampled, monkeypatch):
    from fusionrag_integrations.fidelity import shadow

    def boom(self, budget):
        raise RuntimeError("no memory for the shadow")

    monkeypatch.setattr(shadow.ShadowJob, "run", boom)
    gen = sampled.generate(rag_messages(DOCS), max_new_tokens=6, temperature=0.0)
    deadline = time.monotonic() + 120
    while sampled.fidelity_report().dropped == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    report = sampled.fidelity_report()
    assert report.dropped == 1 and report.samples == [] and report.pending == 0
    assert gen.finish_reason in ("stop", "length") and gen.token_ids
    assert sampled.status().healthy


def test_estimates_and_intervals_from_known_samples(tmp_path):
    """Mean and a 95% interval that narrows with n; shares clipped to [0, 1]; KL buckets counted."""
    estimates = FidelityEstimates(tmp_path / "f.json")
    values = [0.5, 1.0, 0.75, 1.0]
    for i, a in enumerate(values):
        estimates.add(FidelitySample(kl=0.01 * (i + 1), top1=1.0, agreement=a, tokens=4, selector="hybrid",
                                     ratio=0.15, recompute_share=0.2, kv_format="native", precompute="standalone",
                                     model="m"))  # fmt: skip
    (e,) = estimates.estimates()
    mean = sum(values) / 4
    sd = (sum((v - mean) ** 2 for v in values) / 3) ** 0.5
    assert e.agreement.mean == pytest.approx(mean)
    assert e.agreement.high - e.agreement.mean == pytest.approx(min(1.96 * sd / 2, 1 - mean))
    assert e.top1.low == e.top1.high == 1.0 and e.kl.mean == pytest.approx(0.025)
    assert sum(e.kl_buckets) == 4 and e.agreement_buckets[0] == 1 and e.agreement_buckets[-2] == 2


def test_shadows_get_only_steps_nobody_waits_for():
    """Spare tokens go to background work only in a step with no request waiting and no prefill."""
    from fusionrag_integrations.runtime.state import Phase, Request, SeqState
    from fusionrag_integrations.serving.scheduler import Limits, Scheduler

    scheduler = Scheduler(Limits(max_running=4, kv_token_budget=1 << 20, prefill_tokens=256))
    assert scheduler.schedule().spare_tokens == 0 and not scheduler.busy  # no background work
    scheduler.background = 1
    assert scheduler.busy and scheduler.schedule().spare_tokens == 256
    decoding = SeqState(Request.build("a running request"), phase=Phase.DECODE)
    scheduler.running.append(decoding)
    assert scheduler.schedule().spare_tokens == 256 // 8  # beside decoding rows: an eighth of the budget
    scheduler.inbox.put(SeqState(Request.build("a user's question")))
    plan = scheduler.schedule()
    assert plan.lay_out and plan.spare_tokens == 0


def test_shadows_take_at_most_their_share_of_busy_time_and_all_of_idle_time():
    from fusionrag_integrations.fidelity.monitor import FidelityMonitor

    monitor = FidelityMonitor(1.0, "m", "native", None, max_share=0.1)
    for _ in range(50):
        monitor.account_step(0.02)  # busy steps, no shadow yet: 1 s of users' work (decayed a little)
    assert monitor.may_run(busy=True)
    monitor.account(0.2, busy=True)  # one long shadow slice beside users' work: over 10% now
    assert not monitor.may_run(busy=True) and monitor.may_run(busy=False)
    monitor.account(5.0, busy=False)  # idle steps' shadow time is free
    steps = 0
    while not monitor.may_run(busy=True):
        monitor.account_step(0.02)
        steps += 1
    assert 0 < steps < 200  # more busy time without shadows: its share falls back under the bound
