"""Run the load generator in-process against the stub server."""

from __future__ import annotations

import asyncio
from typing import Any

from oss_serve.benchmarks.loadgen import Budget, LoadPoint, LoadPointResult, run_sweep
from oss_serve.benchmarks.stream_client import Endpoint
from oss_serve.benchmarks.workloads import LengthDistribution, Workload, WorkloadSpec

from .conftest import STUB_API_KEY


def run_bench(
    url: str,
    *,
    num_requests: int | None = 4,
    duration_s: float | None = None,
    point: LoadPoint | None = None,
    input_len: int = 50,
    output_len: int = 10,
    stub: dict[str, Any] | None = None,
    api_key: str | None = STUB_API_KEY,
    timeout_s: float = 10.0,
    stream_usage: bool = True,
    warmup_requests: int = 2,
    **spec: Any,
) -> LoadPointResult:
    endpoint = Endpoint.from_base_url(
        url,
        "stub",
        api_key=api_key,
        timeout_s=timeout_s,
        extra_body={"stub": stub} if stub else {},
        stream_usage=stream_usage,
    )
    workload = Workload(
        WorkloadSpec(
            input_len=LengthDistribution.parse(input_len),
            output_len=LengthDistribution.parse(output_len),
            **spec,
        )
    )
    budget = Budget(
        num_requests=num_requests if duration_s is None else None, duration_s=duration_s
    )
    points = [point or LoadPoint("concurrency", concurrency=2)]
    (result,) = asyncio.run(
        run_sweep(endpoint, workload, points, budget, seed=0, warmup_requests=warmup_requests)
    )
    return result
