"""Running the app under uvicorn with limits uvicorn lacks: a deadline for each request head and a cap
on open connections.

uvicorn times out idle keep-alive connections, but a connection that never sends a request head (an
idle socket, a slowloris client trickling headers) is kept forever, and every such connection holds a
file descriptor until the process has none left for real clients. The h11 protocol here closes a
connection whose head is not complete within `timeout_header_s` of its first byte (or of its
opening) and refuses connections past `max_connections`. h11 also bounds the head's size (uvicorn's
`h11_max_incomplete_event_size`), which the httptools parser does not.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServerSettings

log = logging.getLogger("fusionrag_integrations.server")


def guarded_protocol(settings: ServerSettings) -> type[H11Protocol]:
    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _scope_when_armed: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > settings.max_connections:
                log.warning("refusing a connection: %d open (--max-connections)", len(self.connections) - 1)
                transport.close()
                return
            self._await_head()

        def data_received(self, data: bytes) -> None:
            between_requests = self.cycle is None or self.cycle.response_complete
            if between_requests and self._head_timer is None:
                self._await_head()  # a kept-alive connection started its next head
            super().data_received(data)
            if self._head_timer is not None and self.scope is not self._scope_when_armed:
                self._head_timer.cancel()  # the head arrived: the body has its own deadline (guard.py)
                self._head_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._scope_when_armed = self.scope
            self._head_timer = self.loop.call_later(settings.timeout_header_s, self._head_too_slow)

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a port in use fails in a second, not after it.
    Raises OSError (the CLI makes it one line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class DrainingServer(uvicorn.Server):
    """On SIGTERM / SIGINT, `drain` runs first (the engine lets running requests finish within the grace
    period, then ends the rest with an error event): streams close themselves, so uvicorn's own shutdown
    finds nothing to cancel (a cancelled stream is a cut connection for the client and a traceback here)."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining: threading.Thread | None = None

    def handle_exit(self, sig, frame) -> None:
        if self._drain is not None and self._draining is None:
            self._draining = threading.Thread(target=self._drain, name="fusionrag-drain", daemon=True)
            self._draining.start()
        super().handle_exit(sig, frame)


def server(
    app, settings: ServerSettings, access_log: bool = False, drain: Callable[[], None] | None = None
) -> uvicorn.Server:
    """drain: run on the first exit signal (the engine's `loop.stop(drain=grace)`)."""
    config = uvicorn.Config(
        app,
        http=guarded_protocol(settings),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.timeout_keep_alive_s,
        timeout_graceful_shutdown=int(settings.timeout_graceful_shutdown_s) + 5,  # a backstop behind the drain
        log_level="warning",
        access_log=access_log,
        lifespan="on",
    )
    return DrainingServer(config, drain)
