"""A step loop that keeps failing: its requests get 503 (retryable), /health turns 503, and the server is
told to exit so that a supervisor restarts it (in-process app, real engine with a broken forward)."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from fusionrag_integrations.server.app import create_app
from fusionrag_integrations.server.settings import ServerSettings
from tests.conftest import engine_on

BODY = {"model": "m", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


def test_a_dead_step_loop_turns_health_503_and_asks_the_process_to_exit(smol_engine, tmp_path):
    engine = engine_on(smol_engine.loaded, tmp_path / "cache", max_running_requests=4)

    def broken_forward(states):
        raise RuntimeError("device lost (test)")

    engine.runner.decode_batch = broken_forward
    fatal = threading.Event()
    with TestClient(create_app(engine, "m", ServerSettings(), on_fatal=fatal.set)) as client:
        assert client.get("/health").status_code == 200
        for _ in range(3):  # each step fails: its request gets a retryable error, the loop goes on ...
            response = client.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"
        assert fatal.wait(timeout=30)  # ... until it has failed three times: then it stops for good
        health = client.get("/health")
        assert health.status_code == 503 and "device lost" in health.json()["error"]
        assert client.post("/v1/chat/completions", json=BODY).status_code == 503  # refused at once
        assert "fusionrag_healthy 0.0" in client.get("/metrics").text
