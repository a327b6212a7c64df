"""The server driven by the official `openai` client: answers, streaming with one usage chunk, chunk
ingestion and reuse (cached_tokens, fusionrag stats), and the in-process engine's greedy answer."""

from __future__ import annotations

import httpx

from tests.conftest import DOCS, engine_on, rag_messages
from tests.server.conftest import API_KEY, MODEL


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_chat_completion(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                         max_tokens=8, temperature=0)  # fmt: skip
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content
    assert out.usage.completion_tokens <= 8 and out.usage.prompt_tokens > 0
    assert out.choices[0].finish_reason in ("stop", "length")


def test_streaming_has_exactly_one_usage_chunk(client):
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to five."}],
                                            max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and not with_usage[0].choices
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and 1 <= with_usage[0].usage.completion_tokens <= 10
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_ingested_chunks_are_reused_and_full_equals_in_process(client, server, smol_engine, tmp_path):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    # texts no other test sends: the session's server is shared, and the first ingest must compute them all
    docs = [f"{doc} (Ingested over HTTP.)" for doc in DOCS]
    first = httpx.post(f"{server}/v1/chunks", json={"texts": docs}, headers=headers, timeout=300).json()
    again = httpx.post(f"{server}/v1/chunks", json={"texts": docs}, headers=headers, timeout=300).json()
    assert first["computed"] == len(docs) and again == {**first, "computed": 0, "cached": len(docs)}
    messages = rag_messages(docs[:3], "Who founded the Varn Institute?")
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    stats = out.model_extra["fusionrag"]
    assert stats["chunks_found"] == 3 and stats["chunks_reused"] == 3
    assert out.usage.prompt_tokens_details.cached_tokens > 0
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                          extra_body={"selector": "full"})  # fmt: skip
    local = engine_on(smol_engine.loaded, tmp_path / "c").generate(messages, max_new_tokens=12, selector="full")
    assert full.choices[0].message.content == local.text


def test_completions_endpoint(client):
    out = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert out.choices[0].text and out.usage.completion_tokens <= 5
    streamed = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5,
                                              temperature=0, stream=True))  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[0].text


def test_metrics_count_requests(client, server):
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    page = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    assert 'fusionrag_requests_total{outcome="ok"}' in page and "fusionrag_ttft_seconds_bucket" in page
    assert "fusionrag_queue_depth 0.0" in page


def test_vllm_metric_names_count_what_the_responses_reported(client, server):
    from prometheus_client.parser import text_string_to_metric_families

    def values() -> dict:
        page = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(page) for s in f.samples}  # fmt: skip

    label = (("model_name", MODEL),)
    before = values()
    outs = [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Count to {n}."}],
                                           max_tokens=6, temperature=0) for n in (3, 4)]  # fmt: skip
    after = values()
    grew = lambda name, labels=label: after.get((name, labels), 0) - before.get((name, labels), 0)  # noqa: E731
    assert grew("vllm:prompt_tokens_total") == sum(o.usage.prompt_tokens for o in outs)
    assert grew("vllm:generation_tokens_total") == sum(o.usage.completion_tokens for o in outs)
    assert grew("fusionrag_generation_tokens_total", ()) == sum(o.usage.completion_tokens for o in outs)
    assert grew("vllm:e2e_request_latency_seconds_count") == 2 and grew("vllm:time_to_first_token_seconds_count") == 2
    assert grew("vllm:inter_token_latency_seconds_count") == sum(o.usage.completion_tokens - 1 for o in outs)
    reasons = {o.choices[0].finish_reason for o in outs}
    assert sum(grew("vllm:request_success_total", (("finished_reason", r), *label)) for r in reasons) == 2
    assert ("vllm:num_requests_running", label) in after and ("vllm:num_requests_waiting", label) in after
