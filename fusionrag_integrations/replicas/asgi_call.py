"""Call an ASGI app in-process and hand back its response as it is produced: the status and headers
first, then each piece of the body. An engine replica runs the same FastAPI app as `fusionrag serve`
(server/app.py) through this, so a replicated endpoint behaves exactly like a single server (errors,
streaming, usage chunks, metrics), and a stream stopped by its reader tells the app the client left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

Start = dict[str, Any]  # {"status": int, "headers": [(name, value), ...]}


async def call_asgi(
    app, method: str, path: str, query: bytes, headers: list[tuple[str, str]], body: bytes
) -> AsyncIterator[Start | bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "root_path": "",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    messages: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await messages.put(message)

    task = asyncio.create_task(app(scope, receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                raw = message.get("headers", [])
                yield {
                    "status": message["status"],
                    "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw],
                }
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
    finally:
        gone.set()  # the reader stopped (or finished): the app sees the client leave and cleans up
        try:
            await asyncio.wait_for(task, timeout=30)
        except Exception:  # noqa: BLE001 - the app's own error was already reported by it
            pass
