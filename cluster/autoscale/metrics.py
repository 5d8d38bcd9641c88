"""Prometheus gauges of the autoscaler's rounds (the chart's dashboard plots them)."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from oss_serve.cluster.autoscale.policy import Decision, Signals


class AutoscalerMetrics:
    """Replicas per pool (desired, asked of Kubernetes, reporting load) and queue backlogs."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        pool = ["pool"]
        self.desired = Gauge(
            "oss_serve:autoscaler_desired_replicas",
            "Replicas the autoscaler wants",
            pool,
            registry=self.registry,
        )
        self.current = Gauge(
            "oss_serve:autoscaler_current_replicas",
            "Replicas Kubernetes is asked for",
            pool,
            registry=self.registry,
        )
        self.ready = Gauge(
            "oss_serve:autoscaler_ready_replicas",
            "Replicas reporting load in Redis",
            pool,
            registry=self.registry,
        )
        scope = ["scope"]  # a pool name, or "shared" (overflow lanes and orphaned streams)
        self.backlog = Gauge(
            "oss_serve:autoscaler_queue_backlog",
            "Requests not yet delivered to a replica",
            scope,
            registry=self.registry,
        )
        self.oldest_wait = Gauge(
            "oss_serve:autoscaler_oldest_wait_seconds",
            "Age of the oldest undelivered request",
            scope,
            registry=self.registry,
        )

    def observe(self, signals: Signals, decisions: list[Decision]) -> None:
        ready = Counter(r.pool for r in signals.replicas)
        for d in decisions:
            self.desired.labels(d.pool).set(d.desired)
            self.current.labels(d.pool).set(d.current)
            self.ready.labels(d.pool).set(ready.get(d.pool, 0))
        scopes = {**signals.backlog_by_pool, "shared": signals.shared_backlog}
        for name, backlog in scopes.items():
            self.backlog.labels(name).set(backlog.undelivered)
            self.oldest_wait.labels(name).set(backlog.oldest_wait_s)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve /metrics on a background thread."""
        start_http_server(port, addr=host, registry=self.registry)
