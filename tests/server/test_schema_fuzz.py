"""Every request body the server's own OpenAPI schema allows gets an answer that is not a 500, and the
server answers a normal request afterwards. Bodies are drawn by hypothesis from the schema itself
(schemathesis' generator over the app's /openapi.json); the model name is mostly the served one and
max_tokens small (both still schema-valid), so the cases reach generation instead of stopping at a
404 or running for minutes. Each route's status counts print with -s."""

from __future__ import annotations

from collections import Counter

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusionrag_integrations.server.app import create_app
from fusionrag_integrations.server.settings import ServerSettings
from tests.conftest import engine_on

ROUTES = [
    ("post", "/v1/chat/completions", 120),
    ("post", "/v1/completions", 80),
    ("post", "/v1/chunks", 50),
    ("post", "/v1/chunks/keys", 30),
    ("delete", "/v1/chunks", 30),
    ("post", "/tokenize", 30),
    ("post", "/detokenize", 30),
    ("post", "/v1/embeddings", 20),
]
STATUSES: Counter[tuple[str, str, int]] = Counter()


@pytest.fixture(scope="module")
def app_client(smol_engine, tmp_path_factory):
    engine = engine_on(smol_engine.loaded, tmp_path_factory.mktemp("fuzz"), max_running_requests=4)
    with TestClient(create_app(engine, "m", ServerSettings()), raise_server_exceptions=False) as client:
        yield client


def body_strategy(app, method: str, path: str):
    import schemathesis

    cases = schemathesis.openapi.from_dict(app.openapi())[path][method.upper()].as_strategy()

    @st.composite
    def bodies(draw):
        body = draw(cases).body
        if isinstance(body, dict):
            if "model" in body and draw(st.integers(0, 9)) != 9:  # hypothesis favours 0: mostly the served name
                body["model"] = "m"
            for field in ("max_tokens", "max_completion_tokens"):
                if isinstance(body.get(field), int) and not isinstance(body[field], bool) and body[field] > 4:
                    body[field] = draw(st.integers(1, 4))
            if "max_tokens" not in body and path.endswith("completions"):
                body["max_tokens"] = 2
        return body

    return bodies()


@pytest.mark.parametrize(("method", "path", "cases"), ROUTES)
def test_no_schema_valid_body_gets_a_500(app_client, method, path, cases):

    slow = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

    @settings(max_examples=cases, deadline=None, derandomize=True, suppress_health_check=slow)
    @given(body_strategy(app_client.app, method, path))
    def one(body):
        response = app_client.request(method.upper(), path, json=body)
        STATUSES[(method, path, response.status_code)] += 1
        assert response.status_code < 500, (body, response.text[:500])
        if response.status_code >= 400:
            assert response.json()["error"]["message"]

    one()
    hello = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    normal = app_client.post("/v1/chat/completions", json=hello)
    assert normal.status_code == 200
    counts = sorted((s, n) for (m, p, s), n in STATUSES.items() if (m, p) == (method, path))
    print(f"{method.upper()} {path}: {sum(n for _, n in counts)} cases, by status {counts}")
