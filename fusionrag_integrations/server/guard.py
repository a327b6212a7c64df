"""The gate every HTTP request passes before a route sees it (plain ASGI, outermost):

- more header fields than allowed: 431, before anything else is read;
- a declared Content-Length over the body limit: 413 before the body is sent;
- the API key, checked before the body is read (a request without a key learns nothing, not even
  whether its JSON parses), in constant time against every configured key; the key's cache space
  rides in the request's state (settings.key_space);
- a deadline on the body: a client that sends its body too slowly, never ends a chunked body or
  declares more bytes than it sends gets 408 and the connection is closed.

A body without a declared length (chunked) is counted as it arrives by Starlette's own body-limit
middleware, inside this one.
"""

from __future__ import annotations

import asyncio
import hmac
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body
from .settings import ServerSettings

OPEN_PATHS = frozenset({"/health", "/version"})  # answered without a key: liveness probes, version checks


class BodyTimeout(HTTPException):
    """The request body did not arrive within its deadline (raised where a route reads it: a 408 JSON
    error through the app's handlers, and the connection closes, as its half-sent body is unusable)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s", {"connection": "close"})


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app, self.settings = app, settings
        self._keys = [k.encode() for k in settings.api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope["headers"]) > self.settings.max_headers:
            await respond(send, 431, f"more than {self.settings.max_headers} header fields", "too_many_headers")
            return
        key = self._key(scope)
        if key is None:
            await respond(send, 401, "invalid API key", "invalid_api_key")
            return
        if _declared_length(scope) > self.settings.max_body_bytes:  # said up front: refused before it is sent
            await respond(send, 413, f"request body over {self.settings.max_body_bytes} bytes", "body_too_large")
            return
        scope.setdefault("state", {})["key_space"] = self.settings.key_space(key) if key else ""
        await self.app(scope, self._with_deadline(receive), send)

    def _key(self, scope: Scope) -> str | None:
        """The matching key ("" when none is needed), or None when the request is not authorised."""
        if not self._keys or scope["path"] in OPEN_PATHS:
            return ""
        if scope["path"] == "/metrics" and self.settings.metrics_public:
            return ""
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        match = None
        for key in self._keys:  # every key compared, in constant time each: no early exit to time
            if hmac.compare_digest(given, key):
                match = key
        return match.decode() if match is not None else None

    def _with_deadline(self, receive: Receive) -> Receive:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_body_s
        body_done = False

        async def receive_in_time() -> Message:
            nonlocal body_done
            if body_done:  # later receives wait for a disconnect: no deadline on those
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise BodyTimeout(self.settings.timeout_body_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        return receive_in_time


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0  # a malformed length is h11's to refuse
    return 0


async def respond(send: Send, status: int, message: str, code: str) -> None:
    """An OpenAI-style error, sent instead of the app."""
    body = json.dumps(error_body(status, message, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
