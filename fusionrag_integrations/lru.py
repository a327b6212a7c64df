"""The one least-recently-used map: chunk-KV tiers (by bytes), prompt prefixes, CUDA graphs and
auxiliary scores (by count) all evict the same way."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """Most recently used last. Past `max_entries` items or `max_bytes` (summed by `size`), the least
    recently used go first; `put` returns what it evicted (the store moves those to a colder tier)."""

    def __init__(
        self, max_entries: int | None = None, max_bytes: int | None = None, size: Callable[[V], int] | None = None
    ) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.size = size or (lambda _: 0)
        self.used = 0
        self._items: OrderedDict[K, V] = OrderedDict()

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def get(self, key: K) -> V | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)  # a stored None (a graph layout seen once) is recent too
        return self._items[key]

    def peek(self, key: K) -> V | None:
        """The value, without making it recent."""
        return self._items.get(key)

    def put(self, key: K, value: V) -> list[tuple[K, V]]:
        self.pop(key)
        self._items[key] = value
        self.used += self.size(value)
        evicted = []
        while self._items and self._over():
            old_key, old = self._items.popitem(last=False)
            self.used -= self.size(old)
            evicted.append((old_key, old))
        return evicted

    def pop(self, key: K) -> V | None:
        value = self._items.pop(key, None)
        if value is not None:
            self.used -= self.size(value)
        return value

    def _over(self) -> bool:
        too_many = self.max_entries is not None and len(self._items) > self.max_entries
        return too_many or (self.max_bytes is not None and self.used > self.max_bytes)
