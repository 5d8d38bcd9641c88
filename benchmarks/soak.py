"""Soak and overload: a stack driven past its capacity for a while, sampled every second.

    python -m oss_serve.benchmarks.soak --duration-s 300 --output-dir benchmarks/results/soak

Starts `oss-serve up --replicas 2` (or drives a running stack: `--base-url`, `--redis-url`,
`--pid label=PID`), measures its capacity with a closed loop (`--calibrate-s`), then sends
Poisson arrivals at `--overload` x that rate for `--duration-s`. Every second it records
each process's RSS, the queue depth (engine running + waiting, Redis backlog, client in
flight), Redis memory and stream lengths; every request's outcome, Retry-After and TTFT.
Writes soak.json, soak.md (the checks below) and soak.png (RSS, queue depth and latency
over time):

- only 200 and 429, every 429 with Retry-After, no 5xx, no request left hanging;
- RSS growth of every process from the first tenth-after-warm-up window to the last < 5 %;
- Redis bounded: request streams within the admission bound, kv-events within MAXLEN;
- p99 TTFT of admitted requests steady: the last window's within 2x the first's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from oss_serve.benchmarks.loadgen import poisson_arrivals, raise_open_file_limit
from oss_serve.benchmarks.metrics import RequestRecord
from oss_serve.benchmarks.stream_client import ClientPool, Endpoint, send_chat
from oss_serve.benchmarks.workloads import ChatTurn, synthetic_text
from oss_serve.cluster.launch.local_redis import free_port
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.redis_client import connect
from oss_serve.streams.registry import ReplicaLoad

RSS_GROWTH_LIMIT = 0.05
# HTTP 200 with a complete stream: "empty_response" is one whose tokens carried no text
# (a random-weight or demo model under ignore_eos may write only harmony headers)
ANSWERED_200 = ("http_200", "empty_response")
TTFT_STEADY_FACTOR = 2.0


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 300.0
    overload: float = 2.0  # arrival rate / measured capacity
    calibrate_s: float = 20.0
    calibrate_concurrency: int = 32
    input_tokens: int = 64
    output_tokens: int = 32
    sample_interval_s: float = 1.0
    request_timeout_s: float = 120.0
    seed: int = 0


@dataclass
class Sample:
    t_s: float
    rss_mib: dict[str, float]
    running: int
    waiting: int
    queued: int  # undelivered in the replicas' streams, as they report it
    stream_entries: int  # every entry of every request stream (pending ones too)
    kv_events: int
    dead_letters: int
    stored_keys: int  # stored responses and retry records (all with TTLs)
    redis_used_mib: float
    client_in_flight: int


@dataclass
class Stack:
    """What the soak drives and watches."""

    base_url: str
    redis_url: str
    namespace: str
    model: str
    api_key: str | None
    processes: dict[str, psutil.Process] = field(default_factory=dict)


class Prober:
    """One round of measurements from the processes and Redis."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.keys = RedisKeys(stack.namespace)
        self.redis = connect(stack.redis_url, blocking=True, socket_timeout_s=5)

    def sample(self, t_s: float, in_flight: int) -> Sample:
        redis, keys = self.redis, self.keys
        members: Any = redis.smembers(keys.replicas)
        raw_loads = [redis.hgetall(keys.replica(_text(m))) for m in members]
        loads = [ReplicaLoad.from_fields(raw) for raw in raw_loads if raw]
        streams = list(redis.scan_iter(match=f"{keys.namespace}:req:*", count=1000))
        stored = sum(
            1
            for pattern in (keys.response("*"), f"{keys.namespace}:idem:*")
            for _ in redis.scan_iter(match=pattern, count=1000)
        )
        return Sample(
            t_s=round(t_s, 3),
            rss_mib={label: _rss_mib(p) for label, p in self.stack.processes.items()},
            running=sum(load.running for load in loads),
            waiting=sum(load.waiting for load in loads),
            queued=sum(load.queued for load in loads),
            stream_entries=sum(int(redis.xlen(s)) for s in streams),
            kv_events=int(redis.xlen(keys.kv_events)),
            dead_letters=int(redis.xlen(keys.dead_letters)),
            stored_keys=stored,
            redis_used_mib=round(int(redis.info("memory")["used_memory"]) / 2**20, 2),
            client_in_flight=in_flight,
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rss_mib(process: psutil.Process) -> float:
    try:
        return round(process.memory_info().rss / 2**20, 2)
    except psutil.Error:
        return 0.0


class Driver:
    """Requests and their records; `in_flight` for the sampler."""

    def __init__(self, stack: Stack, config: SoakConfig) -> None:
        self.config = config
        self.endpoint = Endpoint.from_base_url(
            stack.base_url,
            stack.model,
            api_key=stack.api_key,
            timeout_s=config.request_timeout_s,
            extra_body={"ignore_eos": True},
        )
        self.records: list[RequestRecord] = []
        self.in_flight = 0
        self._rng = random.Random(config.seed)
        self._started = time.perf_counter()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started

    async def one(self, pool: ClientPool, keep: bool = True) -> RequestRecord:
        record = RequestRecord(len(self.records), 0, 0, start_s=self.elapsed_s())
        if keep:
            self.records.append(record)
        turn = ChatTurn(
            max_tokens=self.config.output_tokens,
            user_content=synthetic_text(self.config.input_tokens, self._rng),
        )
        messages = [{"role": "user", "content": turn.user_content}]
        self.in_flight += 1
        try:
            async with pool.lease() as client:
                await send_chat(client, self.endpoint, messages, turn, record)
        finally:
            self.in_flight -= 1
        return record

    async def capacity(self, pool: ClientPool) -> float:
        """Completions per second of a closed loop (no refusals expected)."""
        done = 0
        deadline = time.perf_counter() + self.config.calibrate_s

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                if (await self.one(pool, keep=False)).ok:
                    done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.config.calibrate_concurrency)))
        return done / (time.perf_counter() - started)

    async def overload(self, pool: ClientPool, rate_per_s: float) -> None:
        """Poisson arrivals at `rate_per_s` for the duration; then every request's end."""
        self._started = time.perf_counter()
        tasks: set[asyncio.Task[RequestRecord]] = set()
        for arrival_s in poisson_arrivals(rate_per_s, self.config.seed):
            if arrival_s >= self.config.duration_s:
                break
            await asyncio.sleep(max(0.0, arrival_s - self.elapsed_s()))
            task = asyncio.create_task(self.one(pool))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.request_timeout_s + 30)


async def run_soak(stack: Stack, config: SoakConfig) -> dict[str, Any]:
    """Calibrate, overload while sampling; the result with its checks."""
    raise_open_file_limit(4096)
    driver = Driver(stack, config)
    prober = Prober(stack)
    samples: list[Sample] = []
    async with ClientPool(1024, config.request_timeout_s) as pool:
        capacity = await driver.capacity(pool)
        rate = max(0.5, capacity * config.overload)

        async def sample_forever() -> None:
            while True:  # off the loop: Redis round trips must not delay the streams' reads
                probe = await asyncio.to_thread(prober.sample, driver.elapsed_s(), driver.in_flight)
                samples.append(probe)
                await asyncio.sleep(config.sample_interval_s)

        sampler = asyncio.create_task(sample_forever())
        try:
            await driver.overload(pool, rate)
        finally:
            sampler.cancel()
    settled = prober.sample(driver.elapsed_s(), driver.in_flight)
    return {
        "config": asdict(config),
        "capacity_per_s": round(capacity, 3),
        "rate_per_s": round(rate, 3),
        "samples": [asdict(s) for s in samples],
        "settled": asdict(settled),
        "requests": request_rows(driver.records),
        "checks": checks(config, driver.records, samples, settled),
    }


REQUEST_COLUMNS = ("start_s", "ttft_s", "e2e_s", "error", "retry_after_s", "output_tokens")


def request_rows(records: list[RequestRecord]) -> dict[str, Any]:
    """Every request as one row of REQUEST_COLUMNS (thousands of them: no per-token gaps)."""
    rows = []
    for record in records:
        row = [getattr(record, column) for column in REQUEST_COLUMNS]
        rows.append([round(v, 4) if isinstance(v, float) else v for v in row])
    return {"columns": list(REQUEST_COLUMNS), "rows": rows}


def _window(values: list[tuple[float, float]], start_s: float, end_s: float) -> float:
    inside = [v for t, v in values if start_s <= t < end_s]
    return sum(inside) / len(inside) if inside else 0.0


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def windows(duration_s: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The early and late measurement windows: around minute 1 and the last half minute of
    a 5-minute run; the middle and the end of a shorter one (after the queues filled)."""
    width = min(30.0, duration_s / 10)
    centre = min(60.0, duration_s / 2)
    return (centre - width / 2, centre + width / 2), (duration_s - width, duration_s)


def checks(
    config: SoakConfig, records: list[RequestRecord], samples: list[Sample], settled: Sample
) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    for record in records:
        kind = "http_200" if record.ok else str(record.error)
        outcomes[kind] = outcomes.get(kind, 0) + 1
    refused = [r for r in records if r.error == "http_429"]
    early, late = windows(config.duration_s)
    growth = {}
    for label in samples[0].rss_mib if samples else {}:
        series = [(s.t_s, s.rss_mib[label]) for s in samples]
        first, last = _window(series, *early), _window(series, *late)
        growth[label] = round((last - first) / first, 4) if first else 0.0
    ttft = [(r.start_s, r.ttft_s) for r in records if r.ok and r.ttft_s is not None]
    ttft_early = _p99([v for t, v in ttft if early[0] <= t < early[1]])
    ttft_late = _p99([v for t, v in ttft if late[0] <= t < late[1]])
    return {
        "outcomes": outcomes,
        "only_200_and_429": set(outcomes) <= {*ANSWERED_200, "http_429"},
        "every_429_has_retry_after": all((r.retry_after_s or 0) >= 1 for r in refused),
        "none_hanging": settled.client_in_flight == 0 and "timeout" not in outcomes,
        "windows_s": {"early": list(early), "late": list(late)},
        "rss_growth": growth,
        "rss_growth_under_5pct": all(g < RSS_GROWTH_LIMIT for g in growth.values()),
        "max_stream_entries": max((s.stream_entries for s in samples), default=0),
        "max_kv_events": max((s.kv_events for s in samples), default=0),
        "redis_used_mib": {
            "early": _window([(s.t_s, s.redis_used_mib) for s in samples], *early),
            "late": _window([(s.t_s, s.redis_used_mib) for s in samples], *late),
        },
        "settled_stream_entries": settled.stream_entries,
        "ttft_p99_s": {"early": round(ttft_early, 4), "late": round(ttft_late, 4)},
        "ttft_p99_steady": ttft_late <= TTFT_STEADY_FACTOR * max(ttft_early, 0.05),
    }


# --- oss-serve up as the stack under test -------------------------------------------------


class UpStack:
    """`oss-serve up --replicas N` in a subprocess; its router and replica processes."""

    def __init__(
        self, folder: Path, replicas: int, max_queue_wait_s: float, max_num_seqs: int | None
    ) -> None:
        self.folder = folder
        self.api_key = "sk-soak-" + secrets.token_hex(8)
        self.http_port = free_port()
        args = [sys.executable, "-P", "-m", "oss_serve.cli", "up", "--replicas", str(replicas),
                "--http-port", str(self.http_port), "--grpc-port", str(free_port()),
                "--link-port", str(free_port()), "--api-key", self.api_key]  # fmt: skip
        env = dict(os.environ, OSS_SERVE_MAX_QUEUE_WAIT_S=str(max_queue_wait_s))
        if max_num_seqs is not None:
            env["OSS_SERVE_MAX_NUM_SEQS"] = str(max_num_seqs)
        self.log_path = folder / "up.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = 1200.0) -> Stack:
        deadline = time.monotonic() + timeout_s
        while "Ctrl-C stops everything" not in (
            output := self.log_path.read_text("utf-8", "replace")
        ):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"oss-serve up did not come up:\n{output[-3000:]}")
            time.sleep(0.5)
        redis_url = re.search(r"redis\s+(redis://\S+)", output)
        model = re.search(r"model '([^']+)'", output)
        assert redis_url and model, output
        processes = {"router (oss-serve up)": psutil.Process(self.process.pid)}
        for index, pid in re.findall(r"replica (\d+)\s+\S+\s+\(pid (\d+)", output):
            processes[f"replica {index}"] = psutil.Process(int(pid))
        return Stack(
            f"http://127.0.0.1:{self.http_port}",
            redis_url.group(1),
            "oss-serve",
            model.group(1),
            self.api_key,
            processes,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()


def main(argv: list[str] | None = None) -> int:
    from oss_serve.benchmarks.soak_report import write_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=300.0)
    parser.add_argument("--overload", type=float, default=2.0)
    parser.add_argument("--calibrate-s", type=float, default=20.0)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--input-tokens", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--max-queue-wait-s", type=float, default=5.0)
    parser.add_argument(
        "--max-num-seqs", type=int, help="each replica's batch bound (default: the engine's)"
    )
    parser.add_argument("--base-url", help="drive this stack instead of starting `oss-serve up`")
    parser.add_argument("--redis-url")
    parser.add_argument("--namespace", default="oss-serve")
    parser.add_argument("--model", default="")
    parser.add_argument("--api-key", default=os.environ.get("OSS_SERVE_API_KEY"))
    parser.add_argument("--pid", action="append", default=[], help="label=PID to watch")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results/soak"))
    args = parser.parse_args(argv)
    config = SoakConfig(
        duration_s=args.duration_s,
        overload=args.overload,
        calibrate_s=args.calibrate_s,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
    )
    up = None
    if args.base_url:
        processes = {
            label: psutil.Process(int(pid)) for label, pid in (p.split("=") for p in args.pid)
        }
        stack = Stack(
            args.base_url, args.redis_url, args.namespace, args.model, args.api_key, processes
        )
    else:
        up = UpStack(
            Path(tempfile.mkdtemp(prefix="soak-")),
            args.replicas,
            args.max_queue_wait_s,
            args.max_num_seqs,
        )
        stack = up.wait_ready()
    try:
        result = asyncio.run(run_soak(stack, config))
    finally:
        if up is not None:
            up.stop()
    result["command"] = " ".join(["python -m oss_serve.benchmarks.soak", *sys.argv[1:]])
    paths = write_report(result, args.output_dir)
    print(json.dumps(result["checks"], indent=2))
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
