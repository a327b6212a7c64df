"""How many of a run's graphable passes (the selection probe, the short recompute) replayed a CUDA graph.

A graph is keyed by the request cache's buffer addresses (model/graphs.py), so whether a pass replays
depends on what the caching allocator hands the request, which the work between two requests changes.
A pass that misses runs eagerly (launch-bound) or, on a layout's second sighting, eagerly and then is
captured (about twice the eager time): a timing that moves between runs of the same code shows here as
a different replayed share before anyone guesses at its cause.

    counter = GraphCounter(); counter.install()
    ...                       # requests
    counter.summary()         # {"probe": {"passes": 10, "replayed": 8, "captured": 1, ...}, ...}
    counter.uninstall()

A pass that did not replay is also counted by why, read from the graphs' keys (kind, token bucket, cache
layout) before the pass: `second_sighting` (its key was seen once: this pass captures), `new_layout` (a
key of this kind and bucket is held, over other buffers: the allocator moved the cache), `new_bucket` (one
over these buffers is held, for another token count: the prompt's fresh tokens crossed a bucket),
`evicted` (this key was seen before, by any counter, and has left the graphs' LRU), `first` (none of
these: a shape never seen).

On a CPU no pass is graphable and the summary is empty.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from fusionrag_integrations.model import graphs as graphs_module

COUNTS = ("passes", "replayed", "captured")
MISSES = ("second_sighting", "new_layout", "new_bucket", "evicted", "first")
_ever_seen: set[tuple] = set()  # graph keys any counter saw, across counters and installs


def bucket_of(tokens: int) -> int:
    """The token count a graphed pass of `tokens` tokens is padded to, and keyed by (model/graphs.py)."""
    return -(-tokens // graphs_module.BUCKET) * graphs_module.BUCKET


def miss_reason(graph_cache, key: tuple) -> str:
    """Why a pass with graph key `key` = (kind..., bucket, layout...) found no graph to replay."""
    kind_len = len(key) - 5  # the layout is four fields (two addresses, shape, dtype), the bucket one
    kind, bucket, layout = key[:kind_len], key[kind_len], key[kind_len + 1 :]
    held = list(graph_cache._graphs)
    if key in held:  # seen once, not captured yet: this pass captures
        return "second_sighting"
    if any(k[:kind_len] == kind and k[kind_len] == bucket and k[kind_len + 1 :] != layout for k in held):
        return "new_layout"
    if any(k[:kind_len] == kind and k[kind_len] != bucket and k[kind_len + 1 :] == layout for k in held):
        return "new_bucket"
    return "evicted" if key in _ever_seen else "first"


class GraphCounter:
    """Wraps GraphCache._replayed (one call per graphable pass) and warm_up_and_capture (one per capture)."""

    def __init__(self) -> None:
        self.counts: defaultdict[str, Counter] = defaultdict(Counter)
        self._originals: tuple | None = None

    def install(self) -> None:
        replayed, capture = graphs_module.GraphCache._replayed, graphs_module.warm_up_and_capture
        self._originals = (replayed, capture)
        captures = Counter()

        def counting_capture(*args, **kwargs):
            captures["now"] += 1
            return capture(*args, **kwargs)

        def counting_replayed(graph_cache, kind, kv_cache, ids, positions, *args, **kwargs):
            key = (*kind, bucket_of(int(positions.numel())), *kv_cache.layout())
            had_graph = graph_cache._graphs.peek(key) is not None  # peek: the LRU's order stays
            reason = None if had_graph else miss_reason(graph_cache, key)
            before, captures["now"] = graph_cache.replays[kind[0]], 0
            out = replayed(graph_cache, kind, kv_cache, ids, positions, *args, **kwargs)
            _ever_seen.add(key)
            counts = self.counts[kind[0]]
            counts["passes"] += 1
            counts["replayed"] += graph_cache.replays[kind[0]] - before
            counts["captured"] += captures["now"]
            if reason is not None:
                counts[reason] += 1
            return out

        graphs_module.GraphCache._replayed = counting_replayed
        graphs_module.warm_up_and_capture = counting_capture

    def uninstall(self) -> None:
        if self._originals is not None:
            graphs_module.GraphCache._replayed, graphs_module.warm_up_and_capture = self._originals
            self._originals = None

    def summary(self) -> dict[str, dict[str, int]]:
        """Per kind: passes, replayed, captured, and each miss reason that occurred."""
        return {kind: {k: c[k] for k in (*COUNTS, *MISSES) if k in COUNTS or k in c}
                for kind, c in sorted(self.counts.items())}  # fmt: skip

    def replayed_share(self) -> float | None:
        """Replayed passes over graphable passes, all kinds together (None: no graphable pass)."""
        passes = sum(c["passes"] for c in self.counts.values())
        return sum(c["replayed"] for c in self.counts.values()) / passes if passes else None
