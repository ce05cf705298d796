"""Prometheus metrics under vLLM's names, so dashboards, KEDA triggers and routers that read
vLLM read fleetlm unchanged. One registry per app (no global state)."""

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fleetlm.engine.core.protocol import EngineCoreStats
from fleetlm.engine.outputs import RequestOutput

_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class _EngineStatsCollector(Collector):
    """Gauges and counters read from the engine core's latest stats at scrape time."""

    def __init__(self, model_name: str, get_stats: Callable[[], EngineCoreStats | None]) -> None:
        self.model_name = model_name
        self.get_stats = get_stats

    def collect(self) -> Iterator:
        stats = self.get_stats()
        if stats is None:
            return
        label = [self.model_name]
        for name, doc, value in (
            ("vllm:num_requests_running", "Requests in the running batch.", stats.num_running),
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", stats.num_waiting),
            (
                "vllm:kv_cache_usage_perc",
                "Fraction of KV-cache blocks in use (1 = full).",
                stats.kv_cache_usage,
            ),
            ("fleetlm:kv_cache_free_blocks", "Free KV-cache blocks.", stats.num_free_blocks),
            ("fleetlm:kv_cache_blocks", "KV-cache blocks in all.", stats.num_blocks),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(label, value)
            yield family
        for name, doc, value in (
            (
                "vllm:prefix_cache_queries",
                "Prompt tokens looked up in the prefix cache.",
                stats.prefix_cache_queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prompt tokens found in the prefix cache.",
                stats.prefix_cache_hits,
            ),
            (
                "vllm:num_preemptions",
                "Requests preempted (recomputed later).",
                stats.num_preemptions,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(label, value)
            yield family


class RequestClock:
    """Timing of one request, fed with each of its outputs."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.last_token_time: float | None = None
        self.num_tokens = 0


class ServerMetrics:
    def __init__(self, model_name: str, get_stats: Callable[[], EngineCoreStats | None]) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]

        def counter(name, doc, extra=()):
            return Counter(name, doc, [*labels, *extra], registry=self.registry)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Tokens generated.")
        self.request_success = counter(
            "vllm:request_success", "Finished requests.", ["finished_reason"]
        )
        self.rejected = counter(
            "fleetlm:requests_rejected", "Requests refused before any work.", ["reason"]
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", _LATENCY_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Time between output tokens.", _LATENCY_BUCKETS
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Request latency, end to end.", _LATENCY_BUCKETS
        )
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Prompt tokens per request.", _TOKEN_BUCKETS
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Generated tokens per request.", _TOKEN_BUCKETS
        )
        self.registry.register(_EngineStatsCollector(model_name, get_stats))

    def observe(self, clock: RequestClock, output: RequestOutput) -> None:
        """Record what one output of a request adds (tokens, latencies, and its end)."""
        now = time.monotonic()
        num_tokens = sum(len(c.token_ids) for c in output.outputs)
        new_tokens = num_tokens - clock.num_tokens
        model = self.model_name
        if new_tokens > 0:
            if clock.last_token_time is None:
                self.ttft.labels(model).observe(now - clock.start)
            else:
                gap = (now - clock.last_token_time) / new_tokens
                for _ in range(new_tokens):
                    self.itl.labels(model).observe(gap)
            clock.last_token_time = now
            clock.num_tokens = num_tokens
            self.generation_tokens.labels(model).inc(new_tokens)
        if output.finished:
            self.e2e.labels(model).observe(now - clock.start)
            self.prompt_tokens.labels(model).inc(len(output.prompt_token_ids))
            self.request_prompt_tokens.labels(model).observe(len(output.prompt_token_ids))
            self.request_generation_tokens.labels(model).observe(num_tokens)
            for completion in output.outputs:
                self.request_success.labels(model, completion.finish_reason or "abort").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
