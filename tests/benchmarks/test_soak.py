"""The soak benchmark in seconds: a real router and replica (subprocesses) driven at three
times their measured capacity answer only 200 or 429 with Retry-After, leave nothing
hanging, and the report (JSON, Markdown, the RSS / queue depth / latency plot) is written."""

from __future__ import annotations

import asyncio
import json
import uuid

import psutil
import pytest

from oss_serve.benchmarks.soak import SoakConfig, Stack, run_soak
from oss_serve.benchmarks.soak_report import write_report
from tests.router.servers import RedisServer
from tests.router.stack import (
    TINY_MODEL,
    http_url,
    start_replica,
    start_router,
    wait_for_replicas,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_short_soak_past_capacity_refuses_with_429_and_reports(tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    namespace = f"soak-{uuid.uuid4().hex[:6]}"
    tight = {"OSS_SERVE_MAX_QUEUE_WAIT_S": "1"}  # refuse past 1 s of estimated queue wait
    small = {"OSS_SERVE_MAX_NUM_SEQS": "4"}  # so that requests queue in Redis, not the batch
    replica = start_replica(server.url, namespace, "soak-r", tmp_path, env=small)
    router, _ = start_router(server.url, namespace, tmp_path, "router", env=tight)
    try:
        wait_for_replicas(server.url, namespace, ["soak-r"], [replica, router])
        stack = Stack(
            http_url(router),
            server.url,
            namespace,
            TINY_MODEL,
            None,
            {"router": psutil.Process(router.pid), "replica": psutil.Process(replica.pid)},
        )
        config = SoakConfig(
            duration_s=10, overload=3.0, calibrate_s=3, calibrate_concurrency=8, output_tokens=16
        )
        result = asyncio.run(run_soak(stack, config))
    finally:
        router.stop()
        replica.stop()
        server.stop()
    checks = result["checks"]
    assert checks["outcomes"].get("http_200", 0) > 0 and checks["outcomes"].get("http_429", 0) > 0
    assert checks["only_200_and_429"], checks["outcomes"]
    assert checks["every_429_has_retry_after"] and checks["none_hanging"]
    assert len(result["samples"]) >= 4
    assert all(v > 0 for s in result["samples"] for v in s["rss_mib"].values())
    paths = write_report(result, tmp_path / "report")
    assert json.loads(paths[0].read_text())["checks"] == checks
    assert "| only 200 and 429 | yes |" in paths[1].read_text()
    assert paths[2].read_bytes().startswith(b"\x89PNG")
