"""Redis as the shared chunk-KV tier: several engines (processes, machines) read and write one store.

The same five calls as the local directory (backends.Backend) plus batched gets. A value is a whole
entry in the file layout (header, keyed MAC, model fingerprint, stored format), written with one SET:
Redis applies a SET atomically, so a reader sees a complete value or none, never half of one; a
value that fails verification (damaged, foreign, of another format) is deleted and is a miss, so
the caller recomputes. Redis unreachable or slow (past `timeout_s`, or the URL's `?socket_timeout=`)
is a miss too, counted and warned about, never a failed request; the client reconnects by itself
once Redis is back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import cast

import redis

from ..integrity import is_valid_key
from .chunk_kv import ChunkKV, CorruptEntryError
from .entry_value import entry_bytes, entry_from_bytes

log = logging.getLogger(__name__)
PIPELINE_BYTES = 64 << 20  # a socket timeout bounds a whole send: keep each one well inside it
RETRY_AFTER_S = 1.0  # after a failure, calls are misses without a round trip for this long (a slow Redis
# then costs one socket timeout per second, not one per chunk)


class RedisBackend:
    tier = "redis"  # its name in the store's hit counts and metrics

    def __init__(
        self,
        url: str,
        namespace: str,
        model_fingerprint: str,
        secret: bytes,
        counts: Counter[str],
        timeout_s: float = 5.0,
    ) -> None:
        """url: redis://host:port/db; namespace: the store's (model, tokenizer, prefix, format) name."""
        self.model_fingerprint, self.secret, self.counts = model_fingerprint, secret, counts
        self.prefix = f"fusionrag:kv:{namespace}:"
        self.redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._warned_at = self._down_until = 0.0

    def _name(self, key: str) -> str | None:
        return self.prefix + key if is_valid_key(key) else None

    def put(self, entry: ChunkKV) -> int:
        """Bytes stored (0: not stored)."""
        name = self._name(entry.key)
        if name is None or self._down():
            return 0
        value = entry_bytes(entry, self.secret)
        try:
            self.redis.set(name, value)
            return len(value)
        except redis.RedisError as exc:
            self._unavailable("write", exc)
            return 0

    def put_many(self, entries: Sequence[ChunkKV]) -> list[int]:
        """A write batch in few round trips (pipelines of SETs of up to PIPELINE_BYTES, no transaction: each
        SET is atomic on its own, so a connection lost mid-batch leaves some entries whole, the rest absent)."""
        named = [(self._name(e.key), entry_bytes(e, self.secret) if self._name(e.key) else b"") for e in entries]
        sizes, start = [], 0
        while start < len(named):
            end, size = start + 1, len(named[start][1])
            while end < len(named) and size + len(named[end][1]) <= PIPELINE_BYTES:
                size, end = size + len(named[end][1]), end + 1
            sizes += self._set_all(named[start:end])
            start = end
        return sizes

    def _set_all(self, named: list[tuple[str | None, bytes]]) -> list[int]:
        if self._down():
            return [0] * len(named)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for name, value in named:
                if name:
                    pipe.set(name, value)
            pipe.execute()
        except redis.RedisError as exc:
            self._unavailable("write", exc)
            return [0] * len(named)
        return [len(value) if name else 0 for name, value in named]

    def get(self, key: str) -> ChunkKV | None:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[ChunkKV | None]:
        """One round trip for all of them (MGET); each value verified on its own. (Splitting a request's
        read over several connections measured no faster on the GPU host: results/redis_tier_gpu_host.json.)"""
        names = [self._name(k) for k in keys]
        asked = [n for n in names if n is not None]
        if asked and self._down():
            return [None] * len(keys)
        try:
            values: dict[str, bytes] = dict(zip(asked, cast(list, self.redis.mget(asked)))) if asked else {}
        except redis.RedisError as exc:
            self._unavailable("read", exc)
            return [None] * len(keys)
        return [self._verified(key, name, values.get(name) if name else None) for key, name in zip(keys, names)]

    def _verified(self, key: str, name: str | None, value: bytes | None) -> ChunkKV | None:
        if name is None or value is None:
            return None
        try:
            return entry_from_bytes(value, key, self.model_fingerprint, self.secret)
        except CorruptEntryError as exc:
            self.counts["corrupt"] += 1
            log.warning("discarding chunk-KV entry %s from Redis (%s); it will be recomputed", key[:12], exc)
            self.delete(key)
            return None

    def contains(self, key: str) -> bool:
        name = self._name(key)
        if name is None or self._down():
            return False
        try:
            return bool(self.redis.exists(name))
        except redis.RedisError as exc:
            self._unavailable("read", exc)
            return False

    def delete(self, key: str) -> None:
        name = self._name(key)
        if name is None or self._down():
            return
        try:
            self.redis.delete(name)
        except redis.RedisError as exc:
            self._unavailable("delete", exc)

    def close(self) -> None:
        self.redis.close()

    def _down(self) -> bool:
        """Within RETRY_AFTER_S of a failure: a miss (counted) without trying."""
        if time.monotonic() < self._down_until:
            self.counts["remote_unavailable"] += 1
            return True
        return False

    def _unavailable(self, what: str, exc: Exception) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER_S
        self.counts["remote_unavailable"] += 1
        if time.monotonic() - self._warned_at > 30:
            self._warned_at = time.monotonic()
            log.warning("Redis chunk-KV tier unavailable for a %s (%s): local tiers, then recompute", what, exc)
