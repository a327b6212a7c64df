"""Prometheus metrics of one server (its own registry, so several apps in one process stay apart):
requests by outcome (ok, error, cancelled: each request counted once), time to first token, tokens
reused vs recomputed, the chunk store's events (hits per tier, misses, corrupt entries, failed
writes, catalog rebuilds), generated tokens, the engine's health and its queue depth and running
requests; vLLM's names beside them (vllm_metrics.py). Everything about the engine is read through
FusionEngine.status()."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..engine import FusionEngine
from ..fidelity.report import AGREEMENT_BUCKETS, KL_BUCKETS
from ..outputs import GenerationChunk
from .vllm_metrics import VllmMetrics

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
STORE_EVENTS = (
    "corrupt",
    "write_failed",
    "read_failed",
    "remote_unavailable",
    "catalog_rebuilt",
    "written_back",
    "adopted",
    "pruned",
    "mismatched",
    "evicted_from_disk",
)


class Metrics:
    def __init__(self, engine: FusionEngine, model_name: str = "") -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fusionrag_requests", "Generation requests by outcome", ["outcome"], registry=r)
        self.ttft = Histogram("fusionrag_ttft_seconds", "Time to first token", buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("fusionrag_prompt_tokens", "Prompt tokens by how they were served", ["kind"], registry=r)
        self.chunks = Counter(
            "fusionrag_chunks", "Chunks found in prompts, and how they were served", ["kind"], registry=r
        )

        def store_count(name: str) -> Callable[[], float]:
            return lambda: float(engine.status().store.get(name, 0))

        store_hits = Gauge("fusionrag_store_lookups", "Chunk-KV store lookups by tier (or miss)", ["tier"], registry=r)
        for tier in ("gpu", "cpu", "disk", "redis", "miss"):
            store_hits.labels(tier).set_function(store_count(tier))
        events = Gauge("fusionrag_store_events", "Chunk store events since start", ["event"], registry=r)
        for event in STORE_EVENTS:
            events.labels(event).set_function(store_count(event))
        Gauge("fusionrag_healthy", "1 while the engine's step loop runs", registry=r).set_function(
            lambda: float(engine.status().healthy)
        )
        Gauge("fusionrag_queue_depth", "Requests waiting for admission", registry=r).set_function(
            lambda: engine.status().queued
        )
        Gauge("fusionrag_running_requests", "Requests being decoded", registry=r).set_function(
            lambda: engine.status().running
        )
        r.register(FidelityCollector(engine))
        self.generated = Counter("fusionrag_generation_tokens", "Generated tokens", registry=r)
        self.vllm = VllmMetrics(engine, model_name, r)

    def observe(self, pieces: Iterator[GenerationChunk]) -> ObservedStream:
        return ObservedStream(pieces, self)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class FidelityCollector(Collector):
    """The fidelity estimate's histograms (engine.fidelity_report()), one series per configuration."""

    LABELS = ("model", "selector", "ratio", "kv_format", "precompute")

    def __init__(self, engine: FusionEngine) -> None:
        self.engine = engine

    def collect(self):
        kl = HistogramMetricFamily(
            "fusionrag_fidelity_kl", "First-token KL(full || fused) of shadowed requests, nats", labels=self.LABELS
        )
        agreement = HistogramMetricFamily(
            "fusionrag_fidelity_agreement",
            "Teacher-forced agreement of shadowed requests' answers with full attention",
            labels=self.LABELS,
        )
        report = self.engine.fidelity_report()
        for e in report.estimates:
            labels = [e.model, e.selector, f"{e.ratio:g}", e.kv_format, e.precompute]
            kl.add_metric(labels, _cumulative(KL_BUCKETS, e.kl_buckets), e.kl.mean * e.n)
            agreement.add_metric(labels, _cumulative(AGREEMENT_BUCKETS, e.agreement_buckets), e.agreement.mean * e.n)
        yield kl
        yield agreement
        guard = report.guard or {}
        decisions = CounterMetricFamily(
            "fusionrag_guard_requests", "Fused requests the fidelity guard judged, by outcome", labels=("outcome",)
        )
        escalated, explored = guard.get("escalated", 0), guard.get("explored", 0)
        decisions.add_metric(["escalated"], escalated)
        decisions.add_metric(["explored"], explored)
        decisions.add_metric(["fused"], guard.get("guarded", 0) - escalated - explored)
        yield decisions
        threshold = GaugeMetricFamily("fusionrag_guard_threshold", "The guard's P(diverged) threshold")
        threshold.add_metric([], guard.get("threshold", 0.0))
        yield threshold


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    total, out = 0, []
    for bound, count in zip([*map(str, bounds), "+Inf"], counts):
        total += count
        out.append((bound, total))
    return out


class ObservedStream(Iterator[GenerationChunk]):
    """The engine's stream, counted when its last piece passes; close() cancels the request."""

    def __init__(self, pieces: Iterator[GenerationChunk], metrics: Metrics) -> None:
        self.pieces, self.metrics, self.finished = pieces, metrics, False

    def __next__(self) -> GenerationChunk:
        try:
            piece = next(self.pieces)
        except StopIteration:
            raise
        except Exception:
            if not self.finished:
                self.finished = True
                self.metrics.requests.labels("error").inc()
            raise
        if piece.stats is not None and piece.usage is not None:
            self.finished = True
            m, stats = self.metrics, piece.stats
            m.requests.labels("ok").inc()
            m.ttft.observe(stats.ttft_ms / 1e3)
            m.tokens.labels("reused").inc(piece.usage.cached_tokens)
            m.tokens.labels("computed").inc(piece.usage.prompt_tokens - piece.usage.cached_tokens)
            m.tokens.labels("chunk_recomputed").inc(stats.tokens_recomputed)
            for kind in ("found", "reused", "computed", "recomputed"):
                m.chunks.labels(kind).inc(getattr(stats, f"chunks_{kind}"))
            m.generated.inc(piece.usage.completion_tokens)
            m.vllm.finished(stats, piece.usage, piece.finish_reason)
        return piece

    def close(self) -> None:
        if not self.finished:
            self.metrics.requests.labels("cancelled").inc()
            self.finished = True
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()
