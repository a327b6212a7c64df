"""The chunk catalog (text -> keys) in Redis, beside the entries: every engine that shares the Redis
tier detects every chunk any of them ingested, without being told.

Same calls as the SQLite catalog (catalog.py). Rows go to an append-only list, so `refs_since(i)`
and `changed()` work as SQLite's rowid and data_version do (one LLEN per lookup when nothing
changed); removals append a tombstone. The disk-budget bookkeeping is a hash of key -> "bytes used".
Redis down: reads return nothing new, writes are counted as failed; the engine keeps its own index.
Redis that comes back empty (restarted without persistence, flushed) is told apart from one that
was only unreachable by an epoch value set beside the log: when it is gone, `generation` goes up
and the registry writes back what its memory tiers still hold.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import redis

from ..integrity import is_valid_key
from .catalog import ChunkRef
from .redis_backend import RETRY_AFTER_S

log = logging.getLogger(__name__)


class RedisCatalog:
    read_only = False

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.redis, self.log_name = client, f"fusionrag:catalog:{namespace}"
        self.usage_name, self.epoch_name = self.log_name + ":usage", self.log_name + ":epoch"
        self.write_failures, self._length = 0, -1
        self._warned_at = self._down_until = 0.0
        self.generation = 0  # bumped when Redis lost the catalog (its epoch changed)
        self._epoch = self._try("read", self._claim_epoch, None)

    def _claim_epoch(self) -> bytes | None:
        """The catalog's epoch: set by the first engine to look (SET NX), read by the others."""
        self.redis.set(self.epoch_name, secrets.token_hex(8), nx=True)
        epoch = self.redis.get(self.epoch_name)
        return epoch.encode() if isinstance(epoch, str) else epoch

    def _try(self, what: str, call: Callable[[], Any], default: Any) -> Any:
        """Redis down (or within a second of failing): the default, and this engine's own index serves."""
        if time.monotonic() < self._down_until:
            self.write_failures += what == "write"
            return default
        try:
            return call()
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_S
            self.write_failures += what == "write"
            if time.monotonic() - self._warned_at > 30:
                self._warned_at = time.monotonic()
                log.warning("chunk catalog in Redis unavailable (%s); this engine's own index serves", exc)
            return default

    def changed(self) -> bool:
        """One round trip: the log's length, and whether its epoch is still the one this engine saw."""

        def look() -> tuple[int, bytes | None]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.llen(self.log_name)
            pipe.get(self.epoch_name)
            length, epoch = pipe.execute()
            return length, epoch

        length, epoch = self._try("read", look, (self._length, self._epoch))
        if epoch != self._epoch:  # Redis came back without our data (or first reachable now)
            lost = self._epoch is not None
            self._epoch = self._try("read", self._claim_epoch, None)
            if lost:
                self.generation += 1
                log.warning("the chunk catalog in Redis was lost (restarted without persistence?): rebuilding")
        changed, self._length = length != self._length, length
        return changed

    def add(self, refs: list[ChunkRef]) -> bool:
        rows = [json.dumps(["add", r.key, r.text, r.context_id, r.num_tokens]) for r in refs]
        return bool(rows) and self._try("write", lambda: self.redis.rpush(self.log_name, *rows), 0) > 0 or not rows

    def remove(self, keys: list[str]) -> list[ChunkRef]:
        known = {r.key: r for r in self.refs_since(0)[0]}
        if keys:
            rows = [json.dumps(["del", k]) for k in keys]
            self._try(
                "write", lambda: (self.redis.rpush(self.log_name, *rows), self.redis.hdel(self.usage_name, *keys)), 0
            )
        return [known[k] for k in keys if k in known]

    def drop(self, ref: ChunkRef) -> None:
        self.remove([ref.key])

    def refs_since(self, rowid: int = 0) -> tuple[list[ChunkRef], int]:
        rows = self._try("read", lambda: self.redis.lrange(self.log_name, rowid, -1), [])
        refs: dict[str, ChunkRef] = {}
        for raw in rows:
            try:
                op, key, *rest = json.loads(raw)
            except (ValueError, TypeError):
                continue
            if op == "del":
                refs.pop(key, None)
            elif op == "add" and is_valid_key(key) and len(rest) == 3 and isinstance(rest[0], str):
                refs[key] = ChunkRef(key, rest[0], str(rest[1]), int(rest[2]) if isinstance(rest[2], int) else 0)
        return list(refs.values()), rowid + len(rows)

    def record(self, sizes: list[tuple[str, int]], replace: bool = True) -> None:
        now, setter = time.time(), self.redis.hset if replace else self.redis.hsetnx
        for key, n in sizes:
            self._try("write", partial(setter, self.usage_name, key, f"{n} {now}"), 0)

    def touch(self, keys: list[str]) -> None:
        now = time.time()
        for key, value in zip(keys, self._try("read", lambda: self.redis.hmget(self.usage_name, keys), [])):
            if value is not None:
                used = f"{value.split()[0].decode()} {now}"
                self._try("write", partial(self.redis.hset, self.usage_name, key, used), 0)

    def least_recent(self) -> list[tuple[str, int, float]]:
        rows = self._try("read", lambda: self.redis.hgetall(self.usage_name), {})
        parsed = [(k.decode(), *v.decode().split()) for k, v in rows.items()]
        return sorted(((k, int(n), float(t)) for k, n, t in parsed if is_valid_key(k)), key=lambda r: r[2])

    def disk_bytes(self) -> int:
        return sum(n for _, n, _ in self.least_recent())

    def close(self) -> None:
        """The client belongs to the backend."""
