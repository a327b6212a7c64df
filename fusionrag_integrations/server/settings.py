"""What a server may accept: keys, sizes, time limits and connection limits, validated once.

Defaults follow what reverse proxies ship (nginx: 60 s for headers and body, 75 s keep-alive; we are
stricter on headers because an LLM request's head is small) and keep a server on one machine safe
from clients that never finish: every connection either sends a request head within
`timeout_header_s`, a body within `timeout_body_s`, or is closed, and the process never holds more
connections than its file-descriptor limit allows.
"""

from __future__ import annotations

import hashlib
import resource

from pydantic import BaseModel, ConfigDict, Field, field_validator

FD_RESERVE = 64  # descriptors kept for the model files, the cache, logs and Redis when connections are capped


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 65536 if soft == resource.RLIM_INFINITY else soft
    return max(16, min(4096, limit - FD_RESERVE))


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys: tuple[str, ...] = ()  # none: open (refused off loopback unless allow_unauthenticated)
    allow_unauthenticated: bool = False
    max_body_bytes: int = Field(8 << 20, gt=0)
    max_headers: int = Field(100, gt=0)  # header fields in one request
    max_header_bytes: int = Field(16 << 10, ge=1024)  # the whole request head (h11's limit)
    timeout_header_s: float = Field(10.0, gt=0)  # a new or kept-alive connection's request head, complete
    timeout_body_s: float = Field(30.0, gt=0)  # a request's body, complete, from its head
    timeout_keep_alive_s: int = Field(5, gt=0)  # idle between requests on one connection
    timeout_graceful_shutdown_s: float = Field(30.0, ge=0)  # SIGTERM: running requests finish within this
    max_connections: int = Field(default_factory=default_max_connections, gt=0)
    max_chunk_texts: int = Field(256, gt=0)  # texts per /v1/chunks request
    metrics_public: bool = False  # /metrics without a key even when keys are set (a scraper inside the network)
    embedding_model: str | None = None  # /v1/embeddings: a sentence-embedding model directory (None: MiniLM)

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            if not key or not key.strip():
                raise ValueError("an API key is empty: give a real key, or none with --allow-unauthenticated")
        return keys

    def key_space(self, key: str) -> str:
        """The cache space of a key's clients: one shared space with a single key; with several, each key its
        own (their chunks are invisible to each other, as different cache salts are)."""
        if len(self.api_keys) <= 1:
            return ""
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
