"""Bulk ingestion over HTTP streams its progress, batch by batch; a client-side store's RemoteEngine
follows it (and a bad text mid-way keeps the batches before it and raises a typed error)."""

from __future__ import annotations

import json

import httpx
import pytest

from fusionrag_integrations.integrations.remote import RemoteChunkError, RemoteEngine
from tests.server.conftest import API_KEY

TEXTS = [f"Bulk passage {i}: the lighthouse keeper of Oster Bay logged {i * 7} ships that winter." for i in range(5)]


def events(server: str, body: dict) -> list[dict]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{server}/v1/chunks", json=body, headers=headers, timeout=300) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]


def test_streamed_ingest_reports_each_batch_then_the_result(server):
    got = events(server, {"texts": TEXTS, "stream": True, "batch_size": 2})
    progress, result = got[:-1], got[-1]
    assert [e["done"] for e in progress] == [2, 4, 5] and {e["total"] for e in progress} == {5}
    assert [e["computed"] for e in progress] == [2, 4, 5]
    assert result["computed"] == 5 and result["cached"] == 0 and len(result["keys"]) == 5
    plain = httpx.post(f"{server}/v1/chunks", json={"texts": TEXTS}, timeout=300,
                       headers={"Authorization": f"Bearer {API_KEY}"}).json()  # fmt: skip
    assert plain["keys"] == result["keys"] and plain["cached"] == 5  # idempotent, same keys either way
    remote = RemoteEngine(server, api_key=API_KEY, batch_size=2)
    assert remote.precompute(TEXTS, show_progress=True) == result["keys"]
    assert remote.forget(result["keys"]) == 5


def test_a_bad_text_mid_stream_is_an_error_event_and_keeps_earlier_batches(server):
    texts = [TEXTS[0] + " (kept)", "   "]
    got = events(server, {"texts": texts, "stream": True, "batch_size": 1})
    assert got[0]["object"] == "chunks.progress" and got[0]["done"] == 1
    assert got[-1]["error"]["type"] == "invalid_request_error"
    remote = RemoteEngine(server, api_key=API_KEY, batch_size=1)
    assert len(remote.keys_for([texts[0]])) == 1  # the first batch stayed stored
    with pytest.raises(RemoteChunkError, match="empty|blank|text"):
        remote.precompute(texts)
    with pytest.raises(RemoteChunkError, match="400"):
        remote.precompute(texts, neighbors=[[]])  # misaligned: refused before anything runs
