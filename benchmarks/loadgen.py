"""The load generator: drive sessions at a fixed concurrency or a Poisson rate, in one process.

One asyncio loop, a few pooled httpx clients, one task per in-flight conversation: this
keeps thousands of concurrent streams cheap. Load points run one after another (a
sweep); warm-up requests go first and are not measured. Everything random (prompt
text, lengths, efforts, arrival gaps) comes from the seed, so two runs with the same
flags send the same requests in the same order of arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from oss_serve.benchmarks.metrics import RequestRecord
from oss_serve.benchmarks.server_metrics import ServerCounters, server_metrics_section
from oss_serve.benchmarks.stream_client import ClientPool, Endpoint, send_chat
from oss_serve.benchmarks.workloads import Session, Workload

_ARRIVAL_SEED_SALT = 0x5EED
_WARMUP_SEED_SALT = 0x3A3A


@dataclass(frozen=True)
class LoadPoint:
    """One arrival pattern: `concurrency` workers, or new sessions at `request_rate` per second."""

    mode: Literal["concurrency", "rate"]
    concurrency: int | None = None
    request_rate: float | None = None  # math.inf = all at once
    max_concurrency: int | None = None  # cap on in-flight sessions in rate mode

    def __post_init__(self) -> None:
        if self.mode == "concurrency" and (self.concurrency is None or self.concurrency < 1):
            raise ValueError("concurrency must be >= 1")
        if self.mode == "rate" and (self.request_rate is None or self.request_rate <= 0):
            raise ValueError("request-rate must be > 0 (inf = all at once)")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max-concurrency must be >= 1")

    @property
    def label(self) -> str:
        if self.mode == "concurrency":
            return f"c={self.concurrency}"
        rate = "inf" if self.request_rate == math.inf else f"{self.request_rate:g}"
        cap = f",max={self.max_concurrency}" if self.max_concurrency else ""
        return f"rate={rate}/s{cap}"

    def to_json(self) -> dict[str, Any]:
        rate = self.request_rate
        return {
            "mode": self.mode,
            "label": self.label,
            "concurrency": self.concurrency,
            "request_rate": "inf" if rate == math.inf else rate,
            "max_concurrency": self.max_concurrency,
        }


@dataclass(frozen=True)
class Budget:
    """When a load point stops issuing requests: after `num_requests`, or after `duration_s`."""

    num_requests: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if (self.num_requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of num-requests and duration-s")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError("num-requests must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration-s must be > 0")


@dataclass
class LoadPointResult:
    point: LoadPoint
    records: list[RequestRecord]
    duration_s: float
    loop_lag_s: list[float] = field(default_factory=list)  # see LoopLagMonitor
    peak_rss_bytes: int | None = None  # this process's peak RSS when the point ended
    server_metrics: dict[str, Any] | None = None  # see server_metrics.server_metrics_section


class LoopLagMonitor:
    """How late the event loop runs a 10 ms ticker: the load generator's own delay.

    Every latency the bench reports includes the time this process took to notice a
    chunk. When the loop is busy (too many new requests per second for one core), the
    lag shows it, so a slow client is not mistaken for a slow server.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.lag_s: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            expected_s = time.perf_counter() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.lag_s.append(max(0.0, time.perf_counter() - expected_s))

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> list[float]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.lag_s


OnRequestDone = Callable[[RequestRecord], None]


@dataclass
class _Run:
    """Shared state of one load point while it runs."""

    client: ClientPool
    endpoint: Endpoint
    budget: Budget
    sessions: Iterator[Session]
    on_done: OnRequestDone | None
    started_s: float = field(default_factory=time.perf_counter)
    issued: int = 0
    records: list[RequestRecord] = field(default_factory=list)

    def take(self) -> bool:
        """Reserve one more request if the budget allows it."""
        if self.budget.num_requests is not None and self.issued >= self.budget.num_requests:
            return False
        if self.budget.duration_s is not None and self.elapsed_s() >= self.budget.duration_s:
            return False
        self.issued += 1
        return True

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started_s

    async def run_session(self, session: Session) -> None:
        """Send the session's turns in order, each with the replies so far; stop at a failure."""
        replies: list[str] = []
        for turn_index, turn in enumerate(session.turns):
            if not self.take():
                return
            record = RequestRecord(
                request_id=self.issued - 1,
                session_id=session.session_id,
                turn=turn_index,
                start_s=self.elapsed_s(),
                tag=turn.tag,
            )
            messages = session.messages_for(turn_index, replies)
            async with self.client.lease() as client:
                await send_chat(client, self.endpoint, messages, turn, record)
            self.records.append(record)
            if self.on_done is not None:
                self.on_done(record)
            if not record.ok:
                return
            replies.append(record.output_text)


def poisson_arrivals(rate_per_s: float, seed: int) -> Iterator[float]:
    """Arrival times (s from start) of a Poisson process; all zero for an infinite rate."""
    rng = random.Random(seed ^ _ARRIVAL_SEED_SALT)
    now_s = 0.0
    while True:
        yield now_s
        if rate_per_s != math.inf:
            now_s += rng.expovariate(rate_per_s)


async def _drive_concurrency(run: _Run, concurrency: int) -> None:
    async def worker() -> None:
        while _budget_left(run):
            await run.run_session(next(run.sessions))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _drive_rate(run: _Run, point: LoadPoint, seed: int) -> None:
    """Start sessions on a Poisson schedule; with a cap, an arrival waits for a free slot.

    Sessions are started until their turns cover the request budget (a multi-turn
    session that fails gives up its remaining turns), or until the duration is over.
    """
    assert point.request_rate is not None
    cap = asyncio.Semaphore(point.max_concurrency) if point.max_concurrency else None
    tasks: set[asyncio.Task[None]] = set()
    planned_requests = 0

    async def start(session: Session) -> None:
        try:
            await run.run_session(session)
        finally:
            if cap is not None:
                cap.release()

    for arrival_s in poisson_arrivals(point.request_rate, seed):
        delay_s = arrival_s - run.elapsed_s()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if cap is not None:
            await cap.acquire()
        limit = run.budget.num_requests
        if not _budget_left(run) or (limit is not None and planned_requests >= limit):
            if cap is not None:
                cap.release()
            break
        session = next(run.sessions)
        planned_requests += len(session.turns)
        task = asyncio.create_task(start(session))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(0)  # let the new session take its first request
    if tasks:
        await asyncio.gather(*tasks)


def _budget_left(run: _Run) -> bool:
    budget = run.budget
    if budget.num_requests is not None:
        return run.issued < budget.num_requests
    assert budget.duration_s is not None
    return run.elapsed_s() < budget.duration_s


async def run_load_point(
    client: ClientPool,
    endpoint: Endpoint,
    workload: Workload,
    point: LoadPoint,
    budget: Budget,
    seed: int,
    on_done: OnRequestDone | None = None,
) -> LoadPointResult:
    """Run one load point to its budget; the wall time ends when the last request finished."""
    sessions = workload.sessions(seed)
    first = next(sessions)  # builds shared prompts and the token pool before the clock starts
    run = _Run(client, endpoint, budget, itertools.chain([first], sessions), on_done)
    monitor = LoopLagMonitor()
    monitor.start()
    if point.mode == "concurrency":
        assert point.concurrency is not None
        await _drive_concurrency(run, point.concurrency)
    else:
        await _drive_rate(run, point, seed)
    duration_s = run.elapsed_s()
    run.records.sort(key=lambda r: r.request_id)
    return LoadPointResult(point, run.records, duration_s, await monitor.stop(), peak_rss_bytes())


def peak_rss_bytes() -> int:
    """The largest RSS this process has had so far (what holding the streams cost)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


async def run_warmup(
    client: ClientPool,
    endpoint: Endpoint,
    workload: Workload,
    num_requests: int,
    concurrency: int,
    seed: int,
) -> list[RequestRecord]:
    """Requests that open connections and fill caches before measuring; their numbers are dropped."""
    if num_requests <= 0:
        return []
    point = LoadPoint("concurrency", concurrency=max(1, min(concurrency, num_requests)))
    result = await run_load_point(
        client,
        endpoint,
        workload,
        point,
        Budget(num_requests=num_requests),
        seed ^ _WARMUP_SEED_SALT,
    )
    return result.records


def max_in_flight(points: list[LoadPoint]) -> int:
    """Connections the pool needs: the largest concurrency, or a generous bound for rates."""
    need = 1
    for point in points:
        if point.mode == "concurrency":
            need = max(need, point.concurrency or 1)
        else:
            need = max(need, point.max_concurrency or 10_000)
    return need


def raise_open_file_limit(wanted: int) -> int:
    """Lift the soft limit on open sockets toward the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard if hard != resource.RLIM_INFINITY else wanted, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


async def run_sweep(
    endpoint: Endpoint,
    workload: Workload,
    points: list[LoadPoint],
    budget: Budget,
    seed: int,
    warmup_requests: int = 0,
    on_done: OnRequestDone | None = None,
    on_point: Callable[[LoadPoint], None] | None = None,
    metrics_url: str | None = None,
) -> list[LoadPointResult]:
    """Warm up once, then run every load point in order with the same seed.

    With `metrics_url`, the server's prefix-cache counters are read before and after
    each load point (`server_metrics.ServerCounters`).
    """
    connections = max_in_flight(points)
    raise_open_file_limit(connections + 256)
    results: list[LoadPointResult] = []
    counters = ServerCounters(metrics_url) if metrics_url else None
    try:
        async with ClientPool(connections, endpoint.timeout_s) as client:
            first = points[0]
            warm_concurrency = first.concurrency or first.max_concurrency or 8
            await run_warmup(client, endpoint, workload, warmup_requests, warm_concurrency, seed)
            for point in points:
                if on_point is not None:
                    on_point(point)
                before = await counters.read_settled() if counters else None
                result = await run_load_point(
                    client, endpoint, workload, point, budget, seed, on_done
                )
                if counters is not None:
                    after = await counters.read_settled() if before is not None else None
                    result.server_metrics = server_metrics_section(
                        counters.url, before, after, counters.error
                    )
                results.append(result)
    finally:
        if counters is not None:
            await counters.aclose()
    return results
