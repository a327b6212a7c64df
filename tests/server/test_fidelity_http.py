"""The fidelity estimate over HTTP: a server started with --fidelity-sample-rate 1 measures the fused
answers it serves (driven by the official openai client), reports them at /v1/fidelity and as
labelled histograms on /metrics, and a restarted server reports the same estimate."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DOCS, rag_messages
from tests.server.conftest import API_KEY, MODEL, ServerProcess

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def fidelity(url: str, samples: int) -> dict:
    deadline = time.monotonic() + 180  # a generous bound on a loaded machine: the shadows did not hang
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/v1/fidelity", headers=AUTH, timeout=30).json()
        if len(body["samples"]) >= samples and body["pending"] == 0:
            return body
        time.sleep(0.2)
    raise AssertionError(f"no fidelity samples: {body}")


def test_served_answers_are_measured_reported_and_kept_across_a_restart(tmp_path):
    from openai import OpenAI

    process = ServerProcess(tmp_path, "--fidelity-sample-rate", "1").wait_ready()
    try:
        assert (
            httpx.post(f"{process.url}/v1/chunks", json={"texts": DOCS}, headers=AUTH, timeout=300).status_code == 200
        )
        client = OpenAI(base_url=f"{process.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        for question in ("Who founded the Varn Institute?", "What colour is the lighthouse?"):
            client.chat.completions.create(model=MODEL, messages=rag_messages(DOCS, question), max_tokens=8,
                                           temperature=0)  # fmt: skip
        body = fidelity(process.url, 2)
        assert httpx.get(f"{process.url}/v1/fidelity", timeout=30).status_code == 401  # the key guards it
        (estimate,) = body["estimates"]
        assert estimate["n"] == 2 and estimate["precompute"] == "standalone" and estimate["kv_format"] == "native"
        assert 0 <= estimate["agreement"]["mean"] <= 1 and estimate["kl"]["mean"] >= 0
        assert {"kl", "top1", "agreement", "selector", "ratio"} <= set(body["samples"][0])
        page = httpx.get(f"{process.url}/metrics", headers=AUTH, timeout=30).text
        labels = {"model": estimate["model"], "selector": estimate["selector"], "ratio": f"{estimate['ratio']:g}",
                  "kv_format": "native", "precompute": "standalone"}  # fmt: skip
        series = {(s.name, s.labels.get("le")): s.value for f in text_string_to_metric_families(page)
                  for s in f.samples if {k: s.labels.get(k) for k in labels} == labels}  # fmt: skip
        assert series[("fusionrag_fidelity_agreement_count", None)] == 2
        assert series[("fusionrag_fidelity_kl_bucket", "+Inf")] == 2
        assert series[("fusionrag_fidelity_agreement_sum", None)] == pytest.approx(
            sum(x["agreement"] for x in body["samples"])
        )
        guarded = client.chat.completions.create(model=MODEL, messages=rag_messages(DOCS), max_tokens=4, temperature=0,
                                                 extra_body={"fidelity": "guarded"})  # fmt: skip
        stats = guarded.model_extra["fusionrag"]
        assert 0.0 < stats["guard_score"] < 1.0 and stats["escalated"] == (stats["selector"] == "full")
        body = fidelity(process.url, 2 if stats["escalated"] else 3)  # answered fused: it is measured too
        assert body["guard"]["guarded"] == 1
        page = httpx.get(f"{process.url}/metrics", headers=AUTH, timeout=30).text
        outcomes = {s.labels["outcome"]: s.value for f in text_string_to_metric_families(page)
                    for s in f.samples if s.name == "fusionrag_guard_requests_total"}  # fmt: skip
        assert sum(outcomes.values()) == 1 and outcomes["escalated"] == float(stats["escalated"])
        refused = httpx.post(f"{process.url}/v1/chat/completions", headers=AUTH, timeout=30,
                             json={"model": MODEL, "messages": rag_messages(DOCS), "fidelity": "always"})  # fmt: skip
        assert refused.status_code == 400 and "fidelity" in refused.text
    finally:
        process.stop()
    again = ServerProcess(tmp_path).wait_ready()  # sampling off: the kept estimate is still reported
    try:
        after = httpx.get(f"{again.url}/v1/fidelity", headers=AUTH, timeout=30).json()
        assert after["estimates"] == body["estimates"] and after["sample_rate"] == 0.0
    finally:
        again.stop()
