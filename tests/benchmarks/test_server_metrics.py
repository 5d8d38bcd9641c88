"""The bench reads the server's prefix-cache counters around each load point.

The counters are served by prometheus_client's own HTTP server from labelled
`CounterMetricFamily` series, the way the router's `ReplicaCollector` exports them (one
series per replica), so the parsing sees the real exposition format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from oss_serve.benchmarks.loadgen import Budget, LoadPoint, run_sweep
from oss_serve.benchmarks.report import beside_row
from oss_serve.benchmarks.server_metrics import (
    PREFIX_CACHE_HITS,
    PREFIX_CACHE_QUERIES,
    ServerCounters,
    metrics_url_for,
    server_metrics_section,
)
from oss_serve.benchmarks.stream_client import Endpoint
from oss_serve.benchmarks.workloads import LengthDistribution, Workload, WorkloadSpec

from .conftest import STUB_API_KEY, free_port

pytestmark = pytest.mark.integration


class PerReplicaCounters(Collector):
    """hits/queries per replica, changed by the test between scrapes."""

    def __init__(self) -> None:
        self.values = {"r0": (0.0, 0.0), "r1": (0.0, 0.0)}
        self.export = True

    def collect(self) -> Iterable[CounterMetricFamily]:
        if not self.export:
            return
        hits = CounterMetricFamily("vllm:prefix_cache_hits", "hits", labels=["replica"])
        queries = CounterMetricFamily("vllm:prefix_cache_queries", "queries", labels=["replica"])
        for replica, (hit, query) in self.values.items():
            hits.add_metric([replica], hit)
            queries.add_metric([replica], query)
        yield hits
        yield queries


@pytest.fixture
def metrics_server() -> Iterator[tuple[str, PerReplicaCounters]]:
    registry = CollectorRegistry()
    counters = PerReplicaCounters()
    registry.register(counters)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{port}/metrics", counters
    finally:
        server.shutdown()
        thread.join(timeout=5)


def _read(url: str) -> tuple[dict[str, float] | None, str | None]:
    async def read() -> tuple[dict[str, float] | None, str | None]:
        counters = ServerCounters(url)
        try:
            return await counters.read(), counters.error
        finally:
            await counters.aclose()

    return asyncio.run(read())


@pytest.mark.parametrize(
    "base_url",
    ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/chat/completions"],
)
def test_metrics_url_is_the_servers_root(base_url):
    assert metrics_url_for(base_url) == "http://h:8000/metrics"


def test_counters_are_summed_over_replicas(metrics_server):
    url, counters = metrics_server
    counters.values = {"r0": (30.0, 100.0), "r1": (10.0, 60.0)}
    values, error = _read(url)
    assert error is None
    assert values == {PREFIX_CACHE_HITS: 40.0, PREFIX_CACHE_QUERIES: 160.0}


def test_a_server_without_the_counters_says_which_are_missing(metrics_server):
    url, counters = metrics_server
    counters.export = False
    values, error = _read(url)
    assert values is None
    assert error is not None and PREFIX_CACHE_HITS in error and PREFIX_CACHE_QUERIES in error


def test_an_unreachable_server_leaves_the_reason():
    values, error = _read(f"http://127.0.0.1:{free_port()}/metrics")
    assert values is None
    assert error is not None and "ConnectError" in error


def test_the_section_keeps_the_difference_and_the_share():
    before = {PREFIX_CACHE_HITS: 40.0, PREFIX_CACHE_QUERIES: 160.0}
    after = {PREFIX_CACHE_HITS: 340.0, PREFIX_CACHE_QUERIES: 560.0}
    section = server_metrics_section("u", before, after, None)
    assert section["prefix_cache"] == {"hit_tokens": 300, "query_tokens": 400, "hit_rate": 0.75}
    reset = server_metrics_section("u", after, before, None)
    assert reset["prefix_cache"] is None and "restarted" in reset["error"]


def test_a_load_point_records_what_the_server_counted_during_it(stub_url, metrics_server):
    """The stub answers the requests; the counters move while they run."""
    url, counters = metrics_server
    counters.values = {"r0": (5.0, 50.0), "r1": (0.0, 0.0)}
    endpoint = Endpoint.from_base_url(stub_url, "stub", api_key=STUB_API_KEY, timeout_s=10.0)
    workload = Workload(
        WorkloadSpec(input_len=LengthDistribution.parse(20), output_len=LengthDistribution.parse(3))
    )

    def count_load(_record: object) -> None:
        hits, queries = counters.values["r1"]
        counters.values["r1"] = (hits + 6.0, queries + 10.0)

    (result,) = asyncio.run(
        run_sweep(
            endpoint,
            workload,
            [LoadPoint("concurrency", concurrency=2)],
            Budget(num_requests=4),
            seed=0,
            on_done=count_load,
            metrics_url=url,
        )
    )
    assert result.server_metrics is not None
    assert result.server_metrics["prefix_cache"] == {
        "hit_tokens": 24,
        "query_tokens": 40,
        "hit_rate": 0.6,
    }
    assert result.peak_rss_bytes is not None and result.peak_rss_bytes > 10 * 2**20
    run = {
        "load": {"label": "c=2"},
        "server_metrics": result.server_metrics,
        "client": {"loop_lag_ms": {"p99": 1.0, "max": 2.0}, "peak_rss_bytes": 2**30},
    }
    assert beside_row(run) == ["c=2", "24 / 40 (60%)", "1.0 / 2.0", "1,024"]
