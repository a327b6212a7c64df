"""benchmarks/graph_counter.py: the replayed share and why a graphable pass missed, on a hand-worked sequence.

A CPU has no CUDA graphs, so the capture is a stand-in that records nothing; the graph cache's keys, LRU
and replay bookkeeping are the real ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fusionrag_integrations.model import graphs as graphs_module
from fusionrag_integrations.model.graphs import MAX_GRAPHS, GraphCache
from tests.conftest import tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from graph_counter import GraphCounter  # noqa: E402


class _NoGraph:
    def replay(self) -> None:  # the output buffer already holds the answer
        pass


def _capture(run, device, what):
    first = run()
    return first, _NoGraph(), first.clone()


def test_misses_are_counted_by_why(monkeypatch):
    monkeypatch.setattr(graphs_module, "warm_up_and_capture", _capture)
    model = tiny_llama("cpu", torch.float32)
    graphs = GraphCache(model, "torch", decode=False, probe=True)
    a, b = model.new_cache(64), model.new_cache(64)  # both alive: two layouts
    counter = GraphCounter()
    counter.install()
    try:

        def probe(cache, n: int) -> None:
            ids, positions = torch.zeros(n, dtype=torch.long), torch.arange(n)
            graphs._replayed(("probe", 2), cache, ids, positions, lambda captured: torch.ones(1), "probe")

        for n in (10, 12, 15):  # bucket 16 on a: first sighting, captured, replayed
            probe(a, n)
        probe(a, 20)  # bucket 32 on a: another bucket over the same buffers
        probe(b, 10)  # bucket 16 on b: the same bucket over other buffers
        for k in range(3, 3 + 3 * MAX_GRAPHS):  # as many new buckets as the LRU holds: bucket 16 on a leaves
            probe(b, 16 * k + 1)
        probe(a, 10)
    finally:
        counter.uninstall()
    probe_counts = counter.summary()["probe"]
    passes = 6 + 3 * MAX_GRAPHS
    assert probe_counts["passes"] == passes
    assert probe_counts["replayed"] == 1
    assert probe_counts["captured"] == 1
    assert probe_counts["second_sighting"] == 1
    assert probe_counts["new_bucket"] == 1 + 3 * MAX_GRAPHS  # a: bucket 32; b: each loop bucket (b holds others)
    assert probe_counts["new_layout"] == 1
    assert probe_counts["evicted"] == 1
    assert probe_counts["first"] == 1
    assert sum(probe_counts[k] for k in ("second_sighting", "new_bucket", "new_layout", "evicted", "first")) == (
        passes - probe_counts["replayed"]
    )
    assert counter.replayed_share() == 1 / passes
    assert graphs_module.warm_up_and_capture is _capture  # uninstalled: the original restored
