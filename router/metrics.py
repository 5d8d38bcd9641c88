"""Prometheus metrics of one router process, with vLLM's names where vLLM has the metric
(so dashboards and autoscalers built for vLLM read oss-serve unchanged).

Request metrics (latencies, tokens, finishes) are observed by this router for the requests
it served. Replica metrics (running, waiting, KV usage, prefix-cache counters) come from the
replicas' load reports in Redis at scrape time, one series per replica; every router reports
the same values, so aggregate them with max/avg by replica, not sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oss_serve.streams.registry import ReplicaLoad

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TOKEN_LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
MODEL_LABEL = "model_name"


class RouterMetrics:
    """The process's metrics registry; `render()` is the /metrics body."""

    def __init__(self, replicas: Callable[[], Mapping[str, ReplicaLoad]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "oss_serve:http_requests",
            "HTTP API requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "oss_serve:requests_in_flight", "Requests this router is serving now.", registry=r
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token (request received -> first output token), seconds.",
            [MODEL_LABEL],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inter_token = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive output token chunks, per token, seconds.",
            [MODEL_LABEL],
            buckets=TOKEN_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "Per request: (e2e - ttft) / (output tokens - 1), seconds.",
            [MODEL_LABEL],
            buckets=TOKEN_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency, seconds.",
            [MODEL_LABEL],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Time a request waited in its Redis queue before a replica started it, seconds.",
            [MODEL_LABEL],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens of finished requests.", [MODEL_LABEL], registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generated tokens.", [MODEL_LABEL], registry=r
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            [MODEL_LABEL, "finished_reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "oss_serve:rate_limited_requests",
            "Requests refused by a per-key rate limit.",
            ["limit"],
            registry=r,
        )
        self.link_refused = Counter(
            "oss_serve:link_refused_peers",
            "Peers refused on the replica link port (reason: missing or wrong cluster token).",
            ["reason"],
            registry=r,
        )
        if replicas is not None:
            r.register(ReplicaCollector(replicas))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Latency bookkeeping of one request, fed its token chunks as they arrive."""

    def __init__(self, metrics: RouterMetrics, model: str, started_s: float) -> None:
        self._metrics = metrics
        self._model = model
        self._started_s = started_s
        self._first_s: float | None = None
        self._last_s = started_s
        self.output_tokens = 0

    def on_tokens(self, count: int, now_s: float, queue_time_s: float | None = None) -> None:
        if queue_time_s is not None:
            self._metrics.queue_time.labels(self._model).observe(queue_time_s)
        if count <= 0:
            return
        if self._first_s is None:
            self._first_s = now_s
            self._metrics.ttft.labels(self._model).observe(now_s - self._started_s)
        else:
            self._observe_gap((now_s - self._last_s) / count, count)
        self._last_s = now_s
        self.output_tokens += count

    def _observe_gap(self, per_token_s: float, count: int) -> None:
        histogram = self._metrics.inter_token.labels(self._model)
        for _ in range(min(count, 64)):  # a chunk of many tokens: bounded work per chunk
            histogram.observe(per_token_s)

    def finish(self, now_s: float, finish_reason: str, prompt_tokens: int) -> None:
        labels = self._model
        self._metrics.e2e.labels(labels).observe(now_s - self._started_s)
        if self._first_s is not None and self.output_tokens > 1:
            per_token_s = (now_s - self._first_s) / (self.output_tokens - 1)
            self._metrics.tpot.labels(labels).observe(per_token_s)
        self._metrics.prompt_tokens.labels(labels).inc(prompt_tokens)
        self._metrics.generation_tokens.labels(labels).inc(self.output_tokens)
        self._metrics.request_success.labels(labels, finish_reason or "unknown").inc()


class ReplicaCollector(Collector):
    """Per-replica series from the registry's load reports, read at scrape time."""

    def __init__(self, replicas: Callable[[], Mapping[str, ReplicaLoad]]) -> None:
        self._replicas = replicas

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        labels = ["replica", "pool", MODEL_LABEL]
        gauges = {
            "vllm:num_requests_running": ("Requests running in the replica's engine.", "running"),
            "vllm:num_requests_waiting": ("Requests waiting in the replica's engine.", "waiting"),
            "vllm:kv_cache_usage_perc": ("KV-cache usage, 0..1.", "kv_usage"),
            "oss_serve:replica_queued_requests": (
                "Requests queued in the replica's Redis streams.",
                "queued",
            ),
            "oss_serve:replica_kv_blocks_free": ("Free KV-cache blocks.", "kv_blocks_free"),
        }
        counters = {
            "vllm:prefix_cache_hits": (
                "Prompt tokens served from the prefix cache.",
                "prefix_hits",
            ),
            "vllm:prefix_cache_queries": (
                "Prompt tokens looked up in the prefix cache.",
                "prefix_queries",
            ),
        }
        replicas = list(self._replicas().values())
        for name, (doc, attribute) in gauges.items():
            family = GaugeMetricFamily(name, doc, labels=labels)
            for load in replicas:
                family.add_metric(
                    [load.replica_id, load.pool, load.model], float(getattr(load, attribute))
                )
            yield family
        for name, (doc, attribute) in counters.items():
            counter = CounterMetricFamily(name, doc, labels=labels)
            for load in replicas:
                counter.add_metric(
                    [load.replica_id, load.pool, load.model], float(getattr(load, attribute))
                )
            yield counter
        healthy = GaugeMetricFamily("oss_serve:healthy_replicas", "Replicas heart-beating now.")
        healthy.add_metric([], float(len(replicas)))
        yield healthy
