"""Exact reuse of a prompt's prefix: the text before its first chunk (system prompt, template head).

That text attends only to itself, so its K/V are the same in every prompt that starts with it:
kept per token sequence and copied in, never recomputed. Selector `full` bypasses it, staying a
true full prefill (the quality and speed baseline).
"""

from __future__ import annotations

import torch

from ..lru import LRU
from ..model.attention import KVCache

PrefixKV = tuple[torch.Tensor, torch.Tensor]  # [L, P, Hkv, D] each


class PrefixCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: LRU[tuple, PrefixKV] = LRU(max_entries=max_entries)

    def lookup(
        self, prompt_ids: list[int], length: int, selector: str, tenant: str = ""
    ) -> tuple[tuple, PrefixKV | None]:
        """(the prefix's key, its cached K/V or None); an empty key when this prompt does not take part. A
        cache space (tenant) reuses only its own prefixes: cached_tokens tells nothing of other spaces."""
        if not length or not self.max_entries or selector == "full":
            return (), None
        key = (tenant, *prompt_ids[:length])
        return key, self._entries.get(key)

    def remember(self, key: tuple, kv: PrefixKV | None, cache: KVCache) -> None:
        """Keep the prefix K/V this prefill computed (once per prefix)."""
        if key and kv is None:
            n = len(key) - 1
            self._entries.put(key, (cache.k[:, :n].clone(), cache.v[:, :n].clone()))
