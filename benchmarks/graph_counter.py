"""How many of a run's graphable passes (the selection probe, the short recompute) replayed a CUDA graph.

A graph is keyed by the request cache's buffer addresses (model/graphs.py), so whether a pass replays
depends on what the caching allocator hands the request, which the work between two requests changes.
A pass that misses runs eagerly (launch-bound) or, on a layout's second sighting, eagerly and then is
captured (about twice the eager time): a timing that moves between runs of the same code shows here as
a different replayed share before anyone guesses at its cause.

    counter = GraphCounter(); counter.install()
    ...                       # requests
    counter.summary()         # {"probe": {"passes": 10, "replayed": 8, "captured": 1}, ...}
    counter.uninstall()

On a CPU no pass is graphable and the summary is empty.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from fusionrag_integrations.model import graphs as graphs_module


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

        def counting_replayed(cache, kind, *args, **kwargs):
            before, captures["now"] = cache.replays[kind[0]], 0
            out = replayed(cache, kind, *args, **kwargs)
            counts = self.counts[kind[0]]
            counts["passes"] += 1
            counts["replayed"] += cache.replays[kind[0]] - before
            counts["captured"] += captures["now"]
            return out

        graphs_module.GraphCache._replayed = counting_replayed
        graphs_module.warm_up_and_capture = counting_capture

    def uninstall(self) -> None:
        if self._originals is not None:
            graphs_module.GraphCache._replayed, graphs_module.warm_up_and_capture = self._originals
            self._originals = None

    def reset(self) -> None:
        self.counts.clear()

    def summary(self) -> dict[str, dict[str, int]]:
        return {kind: {k: c[k] for k in ("passes", "replayed", "captured")} for kind, c in sorted(self.counts.items())}

    def replayed_share(self) -> float | None:
        """Replayed passes over graphable passes, all kinds together (None: no graphable pass)."""
        passes = sum(c["passes"] for c in self.counts.values())
        return sum(c["replayed"] for c in self.counts.values()) / passes if passes else None
