"""call_asgi: an app's response comes back as it is produced (status and headers first), and a reader
that stops early is a client that left (the app's stream is closed)."""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from fusionrag_integrations.replicas.asgi_call import call_asgi


def app_with_log() -> tuple[FastAPI, list[str]]:
    app, log = FastAPI(), []

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {
            "got": (await request.json())["x"],
            "query": request.url.query,
            "auth": request.headers["authorization"],
        }

    @app.get("/count")
    async def count() -> StreamingResponse:
        async def numbers():
            try:
                for i in range(1000):
                    log.append(f"sent {i}")
                    yield f"{i}\n"
                    await asyncio.sleep(0.01)
            finally:
                log.append("closed")

        return StreamingResponse(numbers(), media_type="text/plain", status_code=201)

    return app, log


async def test_a_json_response_with_its_request_body_query_and_headers():
    app, _ = app_with_log()
    body = json.dumps({"x": 41}).encode()
    headers = [("Content-Type", "application/json"), ("Authorization", "Bearer k"), ("Content-Length", str(len(body)))]
    parts = [p async for p in call_asgi(app, "POST", "/echo", b"a=1", headers, body)]
    assert parts[0]["status"] == 200 and ("content-type", "application/json") in parts[0]["headers"]
    assert json.loads(b"".join(parts[1:])) == {"got": 41, "query": "a=1", "auth": "Bearer k"}


async def test_a_stream_arrives_piece_by_piece_and_stopping_closes_it():
    app, log = app_with_log()
    parts = call_asgi(app, "GET", "/count", b"", [], b"")
    start = await anext(parts)
    assert start["status"] == 201
    assert [await anext(parts) for _ in range(3)] == [b"0\n", b"1\n", b"2\n"]  # before the app finished
    await parts.aclose()  # the reader goes away
    for _ in range(100):
        if "closed" in log:
            break
        await asyncio.sleep(0.02)
    assert "closed" in log and len([m for m in log if m.startswith("sent")]) < 50


async def test_an_unknown_path_is_the_apps_own_404():
    app, _ = app_with_log()
    parts = [p async for p in call_asgi(app, "GET", "/nowhere", b"", [], b"")]
    assert parts[0]["status"] == 404
