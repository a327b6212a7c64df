"""The metrics vLLM's dashboards and autoscalers read, under vLLM's names and its `model_name` label,
beside our own (metrics.py): a Grafana board or a KEDA rule written for vLLM works unchanged.

Inter-token latency is a request's decode time spread evenly over its tokens after the first (the
engine reports a request's decode time, not each token's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..engine import FusionEngine
from ..outputs import GenerationStats, Usage

LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class VllmMetrics:
    def __init__(self, engine: FusionEngine, model_name: str, registry: CollectorRegistry) -> None:
        r, label = registry, ["model_name"]
        self.model_name = model_name
        running = Gauge("vllm:num_requests_running", "Requests being decoded", label, registry=r)
        running.labels(model_name).set_function(lambda: engine.status().running)
        waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for admission", label, registry=r)
        waiting.labels(model_name).set_function(lambda: engine.status().queued)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens", label, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens", label, registry=r)
        self.prefix_queries = Counter("vllm:prefix_cache_queries", "Prompt tokens looked up", label, registry=r)
        self.prefix_hits = Counter("vllm:prefix_cache_hits", "Prompt tokens whose KV was reused", label, registry=r)
        self.success = Counter(
            "vllm:request_success", "Finished requests", ["model_name", "finished_reason"], registry=r
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token", label, buckets=TTFT_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Request latency, start to last token",
            label,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Time between generated tokens", label, buckets=ITL_BUCKETS, registry=r
        )

    def finished(self, stats: GenerationStats, usage: Usage, reason: str | None) -> None:
        name = self.model_name
        self.prompt_tokens.labels(name).inc(usage.prompt_tokens)
        self.generation_tokens.labels(name).inc(usage.completion_tokens)
        self.prefix_queries.labels(name).inc(usage.prompt_tokens)
        self.prefix_hits.labels(name).inc(usage.cached_tokens)
        self.success.labels(name, reason or "stop").inc()
        self.ttft.labels(name).observe(stats.ttft_ms / 1e3)
        self.e2e.labels(name).observe((stats.ttft_ms + stats.decode_ms) / 1e3)
        gaps = usage.completion_tokens - 1
        if gaps > 0:
            per_token = stats.decode_ms / 1e3 / gaps
            for _ in range(gaps):
                self.itl.labels(name).observe(per_token)
