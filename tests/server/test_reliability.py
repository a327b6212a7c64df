"""What must hold whatever clients do: one request never stops the server; slow, idle and oversized
clients are cut off at their limits; bodies arrive however they are framed; each client sees only its
own cache space; a client's mistake is a 400 named in one log line. Against real `fusionrag serve`
processes on loopback (time bounds here are wide margins over configured timeouts, never speed)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.conftest import DOCS, rag_messages
from tests.server.conftest import API_KEY, MODEL, ServerProcess

AUTH = {"Authorization": f"Bearer {API_KEY}"}
OTHER_KEY = "other-key-9876543210"
HELLO = [{"role": "user", "content": "Hello"}]


def chat(**body) -> dict:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 2, **body}


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """A server with short limits and two API keys (each key its own cache space)."""
    process = ServerProcess(
        tmp_path_factory.mktemp("strict"),
        "--timeout-header",
        "1",
        "--timeout-body",
        "2",
        "--max-connections",
        "40",
        "--max-headers",
        "50",
        "--max-chunk-texts",
        "8",
        "--timeout-graceful-shutdown",
        "3",
        "--api-key",
        OTHER_KEY,
    ).wait_ready()
    yield process
    process.stop()


def ask_ok(url: str) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", json=chat(), headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text


# -- 1. a request that broke the sampler no longer stops the scheduler ------------------------------


@pytest.mark.parametrize("field", [{"temperature": 1e-37, "seed": 1}, {"temperature": 1.0, "top_p": 1e-46}])
def test_vanishing_temperature_or_top_p_is_answered_and_the_server_goes_on(server, field):
    with httpx.stream(
        "POST",
        f"{server}/v1/chat/completions",
        headers=AUTH,
        timeout=120,
        json=chat(max_tokens=20, stream=True, **field),
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
    ask_ok(server)
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


# -- 3. bodies sent chunked ----------------------------------------------------------------------


def chunked(payload: dict):
    data = json.dumps(payload).encode()
    for i in range(0, len(data), 7):
        yield data[i : i + 7]


def test_a_chunked_body_is_read_like_any_other(server):
    response = httpx.post(
        f"{server}/v1/chat/completions",
        content=chunked(chat()),
        timeout=120,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] is not None
    ingest = httpx.post(
        f"{server}/v1/chunks",
        content=chunked({"texts": [DOCS[0]]}),
        timeout=120,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert ingest.status_code == 200 and len(ingest.json()["keys"]) == 1


def test_a_chunked_body_over_the_limit_is_413_json(server):
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    response = httpx.post(
        f"{server}/v1/chat/completions",
        content=_big_chunks(big),
        headers={**AUTH, "content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def _big_chunks(payload: dict):
    data = json.dumps(payload).encode()
    for i in range(0, len(data), 1 << 16):
        yield data[i : i + (1 << 16)]


# -- 4. connections that never finish -----------------------------------------------------------


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closed this connection within `seconds` (reading what it sent until EOF)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


HEAD = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY + "\r\n"


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # idle: never a byte
        b"GET /health HTTP/1.1\r\nHost: x\r\n",  # slowloris: a head never finished
        (HEAD + "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{").encode(),  # a length it never sends
        (HEAD + 'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n').encode(),
    ],
    ids=["idle", "slow_header", "content_length_lie", "endless_chunked"],
)
def test_a_connection_that_never_finishes_is_closed_at_its_timeout(strict, sent):
    """Header timeout 1 s, body timeout 2 s: each closed well within 20 s; the server keeps answering."""
    sock = connect(strict.url)
    sock.sendall(sent)
    assert closed_within(sock, 20)
    sock.close()
    ask_ok(strict.url)


def test_a_body_that_never_completes_gets_408_json(strict):
    sock = connect(strict.url)
    sock.sendall((HEAD + "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{").encode())
    sock.settimeout(20)
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(65536)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408")


def test_connections_past_the_cap_are_refused_and_served_again_once_they_close(strict):
    held = [connect(strict.url) for _ in range(60)]  # the cap is 40
    refused = sum(closed_within(s, 0.5) for s in held[45:])
    assert refused == len(held[45:])
    for s in held:
        s.close()
    time.sleep(0.5)
    ask_ok(strict.url)


@pytest.mark.parametrize(
    "headers", [{"x-big": "a" * (10 << 20)}, {f"x-h{i}": "v" for i in range(5000)}], ids=["10MB_header", "5000_headers"]
)
def test_oversized_or_too_many_headers_are_refused(strict, headers):
    try:
        response = httpx.get(f"{strict.url}/v1/models", headers={**AUTH, **headers}, timeout=30)
        assert response.status_code in (400, 431)
    except httpx.HTTPError:
        pass  # the server may close the connection instead: either way it is not served
    sixty = {f"x-h{i}": "v" for i in range(60)}  # over --max-headers 50, within h11's size limit
    assert httpx.get(f"{strict.url}/v1/models", headers={**AUTH, **sixty}, timeout=30).status_code == 431
    ask_ok(strict.url)


# -- 5. head-of-line blocking: bounded ingest, cancelled waits -------------------------------------


def test_an_ingest_of_more_texts_than_allowed_is_refused_by_name(strict):
    response = httpx.post(
        f"{strict.url}/v1/chunks", json={"texts": [f"text {i} " * 20 for i in range(9)]}, headers=AUTH, timeout=60
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_texts"


def metric(url: str, line: str) -> float:
    page = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30).text
    for row in page.splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    return 0.0


def test_a_non_streamed_request_whose_client_left_is_cancelled(strict):
    before = metric(strict.url, 'fusionrag_requests_total{outcome="cancelled"}')
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{strict.url}/v1/completions",
            headers=AUTH,
            timeout=1.5,
            json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0},
        )
    deadline = time.monotonic() + 60  # the request stops at its next step instead of running 2000 tokens
    while time.monotonic() < deadline and metric(strict.url, "fusionrag_running_requests") > 0:
        time.sleep(0.2)
    assert metric(strict.url, "fusionrag_running_requests") == 0
    assert metric(strict.url, 'fusionrag_requests_total{outcome="cancelled"}') == before + 1


# -- 6. client mistakes are 400s that name the field ------------------------------------------------

MISTAKES = {
    "tool_choice_function_is_a_string": chat(
        tools=[{"type": "function", "function": {"name": "f"}}], tool_choice={"type": "function", "function": "f"}
    ),
    "tool_choice_required_without_tools": chat(tool_choice="required"),
    "seed_over_64_bits": chat(seed=1 << 64),
    "seed_under_64_bits": chat(seed=-(1 << 63) - 1),
    "tool_call_without_function": chat(
        messages=[{"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]}]
    ),
    "max_tokens_true": chat(max_tokens=True),
    "temperature_string": chat(temperature="hot"),
}


@pytest.mark.parametrize("kind", list(MISTAKES))
def test_client_mistakes_are_400_and_logged_as_one_line(server, server_process, kind):
    response = httpx.post(f"{server}/v1/chat/completions", json=MISTAKES[kind], headers=AUTH, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
    time.sleep(0.2)
    log = server_process.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    assert any(line.startswith("fusionrag: 400 POST /v1/chat/completions") for line in log.splitlines())


def test_a_request_without_a_key_is_401_before_its_body_is_looked_at(server):
    bad_json = httpx.post(
        f"{server}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}, timeout=30
    )
    assert bad_json.status_code == 401
    for path in ("/metrics", "/openapi.json", "/docs"):
        assert httpx.get(f"{server}{path}", timeout=30).status_code == 401
    assert httpx.get(f"{server}/health", timeout=30).status_code == 200


def test_a_streamed_ingest_error_ends_with_done(server):
    with httpx.stream(
        "POST",
        f"{server}/v1/chunks",
        headers=AUTH,
        timeout=60,
        json={"texts": [DOCS[0], "   "], "stream": True, "batch_size": 1},
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert '"error"' in lines[-2] and lines[-1] == "data: [DONE]"


# -- 7. cache spaces: by salt, and by API key ------------------------------------------------------


def test_a_cache_salt_hides_chunks_from_other_salts(server):
    texts = [
        f"Alice's private note {i}: the vault at Kellersby opens with code {1000 + 7 * i}, on the third bell."
        for i in range(2)
    ]
    ingest = httpx.post(f"{server}/v1/chunks", json={"texts": texts, "cache_salt": "alice"}, headers=AUTH, timeout=120)
    assert ingest.status_code == 200
    for salt in (None, "bob"):
        body = {"texts": texts, **({"cache_salt": salt} if salt else {})}
        assert httpx.post(f"{server}/v1/chunks/keys", json=body, headers=AUTH, timeout=60).json()["keys"] == []
        gone = httpx.request("DELETE", f"{server}/v1/chunks", json=body, headers=AUTH, timeout=60).json()
        assert gone["removed"] == 0
        answer = httpx.post(
            f"{server}/v1/chat/completions",
            headers=AUTH,
            timeout=120,
            json=chat(messages=rag_messages(texts), **({"cache_salt": salt} if salt else {})),
        )
        assert answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    mine = httpx.post(
        f"{server}/v1/chat/completions",
        headers=AUTH,
        timeout=120,
        json=chat(messages=rag_messages(texts), cache_salt="alice"),
    ).json()
    assert mine["fusionrag"]["chunks_reused"] == 2


def test_each_api_key_has_its_own_cache_space(strict):
    texts = ["A note filed under the first key only: the ferry to Osterholm leaves at half past six."]
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert httpx.post(f"{strict.url}/v1/chunks", json={"texts": texts}, headers=AUTH, timeout=120).status_code == 200
    assert (
        httpx.post(f"{strict.url}/v1/chunks/keys", json={"texts": texts}, headers=other, timeout=60).json()["keys"]
        == []
    )
    assert (
        len(httpx.post(f"{strict.url}/v1/chunks/keys", json={"texts": texts}, headers=AUTH, timeout=60).json()["keys"])
        == 1
    )


# -- SIGTERM drains and exits --------------------------------------------------------------------


def test_sigterm_lets_a_running_stream_finish_within_the_grace_period_and_exits(tmp_path):
    """SIGTERM: the engine gives running requests the grace period, then ends the rest with an error event
    and [DONE] (the response completes: no cut connection, no traceback), and the process exits."""
    process = ServerProcess(tmp_path, "--timeout-graceful-shutdown", "3").wait_ready()
    try:
        with httpx.stream(
            "POST",
            f"{process.url}/v1/completions",
            headers=AUTH,
            timeout=120,
            # greedy counting never picks the end-of-text token: the stream is still running at SIGTERM
            json={
                "model": MODEL,
                "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
                "max_tokens": 5000,
                "temperature": 0,
                "stream": True,
            },
        ) as response:
            lines = response.iter_lines()
            next(lines)
            process.proc.terminate()
            t0 = time.monotonic()
            rest = list(lines)  # 5000 tokens take longer than 3 s on a CPU: ended by the engine, completely
        # uvicorn re-raises the signal once shut down: the exit status is SIGTERM's
        assert process.proc.wait(timeout=60) in (0, -15)
        assert time.monotonic() - t0 < 30  # the 3 s grace period, with a wide margin: it did not hang
        events = [line for line in rest if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and "engine_unavailable" in events[-2]
        assert "Traceback" not in process.log.read_text()
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
