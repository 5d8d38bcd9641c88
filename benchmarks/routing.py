"""Routing benchmarks: how fast a prefix-aware decision is, and how good it is.

    python -m oss_serve.benchmarks.routing micro   # decision latency, 1e5 blocks x 16 replicas
    python -m oss_serve.benchmarks.routing macro   # multi-turn chats through the real stack

`micro` times PrefixAware.select on an index of 10^5 block hashes over 16 replicas (the
prompt's hashes precomputed: the decision itself), and separately the hashing of a prompt.

`macro` (default workload: 12 conversations x 5 turns, a 256-token shared system prompt,
a 1536-token per-conversation context, 64 new user tokens and 16 output tokens a turn)
starts a redis-server, replica processes (`oss-serve replica`, tiny model) and two
in-process routers, then runs the same multi-turn workload (conversations sharing a long
system prompt, each turn extending its own history) once per policy on two replicas and
once on a single replica. It prints, side by side: the prefix-cache hit rate from the
engines' own counters (and its ratio to the single replica's), load balance (max/mean of
each replica's time-averaged running requests) and client-side TTFT.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oss_serve.common.kv_hash import block_hashes
from oss_serve.router.policies import Candidate, PrefixAware, RouteRequest
from oss_serve.router.prefix_index import PrefixIndex, PromptBlocks
from oss_serve.streams.registry import ReplicaLoad

BLOCK = 16


# --- micro: decision latency -------------------------------------------------------------


def micro(
    num_blocks: int, num_replicas: int, prompt_blocks: int, matched_blocks: int, trials: int
) -> None:
    rng = random.Random(0)
    index = PrefixIndex()
    chain_blocks = 100
    prefixes = []
    for _ in range(num_blocks // chain_blocks):
        tokens = [rng.randrange(199_998) for _ in range(chain_blocks * BLOCK)]
        prefixes.append(tokens)
        for replica in rng.sample(range(num_replicas), 2):  # each prefix cached on 2 replicas
            index.store(f"replica-{replica}", block_hashes(tokens, BLOCK))
    candidates = [
        Candidate(
            ReplicaLoad(
                replica_id=f"replica-{r}",
                running=rng.randrange(8),
                kv_blocks_total=4096,
                kv_blocks_free=rng.randrange(4096),
            )
        )
        for r in range(num_replicas)
    ]
    policy = PrefixAware(index, balance_abs_threshold=1 << 30)
    decide_us, hash_us, match_us = [], [], []
    for _ in range(trials):
        shared = rng.choice(prefixes)[: matched_blocks * BLOCK]
        tokens = shared + [
            rng.randrange(199_998) for _ in range((prompt_blocks - matched_blocks) * BLOCK)
        ]
        started = time.perf_counter()
        prompt = PromptBlocks(tokens, BLOCK)
        prompt.all()
        hash_us.append((time.perf_counter() - started) * 1e6)
        request = RouteRequest("bench", prompt)
        started = time.perf_counter()
        index.match(prompt)
        match_us.append((time.perf_counter() - started) * 1e6)
        started = time.perf_counter()
        policy.select(request, candidates)
        decide_us.append((time.perf_counter() - started) * 1e6)
    print(
        f"index: {len(index):,} block hashes, {num_replicas} replicas; prompt {prompt_blocks} blocks "
        f"({prompt_blocks * BLOCK} tokens), {matched_blocks} cached; {trials} decisions"
    )
    print(f"{'':28} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9}")
    for name, values in (
        ("decision (select)", decide_us),
        ("  of which index.match", match_us),
        ("hashing the whole prompt", hash_us),
    ):
        ordered = sorted(values)
        print(
            f"{name:28} {ordered[len(ordered) // 2]:9.1f} {ordered[int(len(ordered) * 0.99)]:9.1f} {statistics.fmean(values):9.1f}"
        )


# --- macro: the real stack -----------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    hit_rate: float = 0.0
    balance: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    requests_by_replica: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """redis-server and replica subprocesses, stopped by their own pids."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = _free_port()
        self.redis_url = f"redis://127.0.0.1:{self.port}/0"
        redis_server = Path(sys.executable).parent / "redis-server"
        self._spawn(
            [str(redis_server), "--port", str(self.port), "--save", "", "--appendonly", "no"],
            "redis",
        )

    def _spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env))

    def replica(self, namespace: str, replica_id: str, served_name: str, kv_bytes: int) -> None:
        import os

        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            OSS_SERVE_HEARTBEAT_INTERVAL_S="0.1",
            OSS_SERVE_REDIS_NAMESPACE=namespace,
        )
        args = [sys.executable, "-P", "-m", "oss_serve.cli", "replica", "--model", "gpt-oss-tiny",
                "--served-model-name", served_name, "--redis-url", self.redis_url, "--replica-id", replica_id,
                "--max-model-len", "4096", "--kv-cache-memory", str(kv_bytes)]  # fmt: skip
        self._spawn(args, replica_id, env)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


@dataclass(frozen=True)
class Workload:
    conversations: int
    turns: int
    system_tokens: int
    context_tokens: int
    user_tokens: int
    output_tokens: int


async def _conversation(
    stub: list[Any],
    model: str,
    workload: Workload,
    system: list[int],
    seed: int,
    ttfts: list[float],
    routers: int,
) -> None:
    from oss_serve.protos import inference_pb2

    rng = random.Random(seed)
    history = system + [rng.randrange(1000, 199_000) for _ in range(workload.context_tokens)]
    for turn in range(workload.turns):
        history = history + [rng.randrange(1000, 199_000) for _ in range(workload.user_tokens)]
        request = inference_pb2.GenerateRequest(
            model=model,
            prompt_token_ids=history,
            sampling=inference_pb2.SamplingParams(
                temperature=0, max_tokens=workload.output_tokens, ignore_eos=True
            ),
        )
        started = time.perf_counter()
        first = True
        output: list[int] = []
        async for chunk in stub[(seed + turn) % routers].Generate(request):
            if first and chunk.token_ids:
                ttfts.append(time.perf_counter() - started)
                first = False
            output.extend(chunk.token_ids)
        history = history + output
        await asyncio.sleep(rng.uniform(0.0, 0.05))  # the user reads, then types


async def _registry(redis: Any, namespace: str, replicas: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for replica in replicas:
        raw = await redis.hgetall(f"{namespace}:replica:{replica}")
        out[replica] = {
            k.decode(): float(v)
            for k, v in raw.items()
            if k.decode() in ("running", "prefix_hits", "prefix_queries")
        }
    return out


async def _run_policy(
    label: str,
    policy: str,
    model: str,
    replicas: list[str],
    procs: Processes,
    namespace: str,
    workload: Workload,
    seed: int,
) -> RunResult:
    import grpc

    from oss_serve.common.settings import Settings
    from oss_serve.protos import inference_pb2_grpc
    from oss_serve.router.server import RouterServer
    from oss_serve.streams.redis_client import connect

    redis = connect(procs.redis_url)
    name, _, measure = policy.partition(":")  # e.g. prefix_aware:kv_blocks = Dynamo's cost
    settings = Settings.model_validate(
        {
            "redis_url": procs.redis_url,
            "redis_namespace": namespace,
            "grpc_port": 0,
            "routing_policy": name,
            "prefix_load_measure": measure or "prefill",
        }
    )
    routers = [RouterServer(settings) for _ in range(2)]
    for router in routers:
        await router.start()
        await router.wait_for_replicas(len(replicas) + 1)
    channels = [grpc.aio.insecure_channel(router.address) for router in routers]
    stubs = [inference_pb2_grpc.InferenceStub(channel) for channel in channels]
    rng = random.Random(seed)
    system = [rng.randrange(1000, 199_000) for _ in range(workload.system_tokens)]
    before = await _registry(redis, namespace, replicas)
    running_samples: dict[str, list[float]] = {r: [] for r in replicas}
    ttfts: list[float] = []
    started = time.perf_counter()
    convs = asyncio.gather(*(
        _conversation(stubs, model, workload, system, seed * 1000 + i, ttfts, len(stubs)) for i in range(workload.conversations)
    ))  # fmt: skip
    while not convs.done():
        snapshot = await _registry(redis, namespace, replicas)
        if any(s.get("running", 0) for s in snapshot.values()):
            for replica in replicas:
                running_samples[replica].append(snapshot[replica].get("running", 0.0))
        await asyncio.sleep(0.05)
    await convs
    wall_s = time.perf_counter() - started
    await asyncio.sleep(0.5)  # last load reports
    after = await _registry(redis, namespace, replicas)
    hits = sum(after[r]["prefix_hits"] - before[r]["prefix_hits"] for r in replicas)
    queries = sum(after[r]["prefix_queries"] - before[r]["prefix_queries"] for r in replicas)
    served = {r: int(after[r]["prefix_queries"] - before[r]["prefix_queries"]) for r in replicas}
    means = [statistics.fmean(v) if v else 0.0 for v in running_samples.values()]
    balance = (
        max(means) / statistics.fmean(means)
        if len(means) > 1 and statistics.fmean(means) > 0
        else 1.0
    )
    for channel in channels:
        await channel.close()
    for router in routers:
        await router.stop()
    await redis.aclose()
    return RunResult(label, hits / queries if queries else 0.0, balance, ttfts, served, wall_s)


def _wait_registered(
    procs: Processes, namespace: str, replicas: list[str], timeout_s: float = 120
) -> None:
    import redis as redis_sync

    client = redis_sync.Redis.from_url(procs.redis_url)
    deadline = time.monotonic() + timeout_s
    while not all(client.exists(f"{namespace}:replica:{r}") for r in replicas):
        if time.monotonic() > deadline:
            raise TimeoutError("replicas did not register")
        if any(proc.poll() is not None for proc in procs.procs):
            raise RuntimeError(f"a replica exited; see the logs in {procs.folder}")
        time.sleep(0.2)


def macro(workload: Workload, policies: list[str], folder: Path) -> list[RunResult]:
    folder.mkdir(parents=True, exist_ok=True)
    procs = Processes(folder)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    kv_bytes = 256 * 1024 * 1024  # enough that no run evicts: hit rates are the router's doing
    pair, single = ["bench-a", "bench-b"], ["bench-single"]
    try:
        time.sleep(0.3)
        for replica in pair:
            procs.replica(namespace, replica, "tiny", kv_bytes)
        procs.replica(namespace, single[0], "tiny-single", kv_bytes)
        _wait_registered(procs, namespace, pair + single)
        results = [
            asyncio.run(
                _run_policy(
                    "1 replica",
                    "round_robin",
                    "tiny-single",
                    single,
                    procs,
                    namespace,
                    workload,
                    seed=1,
                )
            )
        ]
        for index, policy in enumerate(policies):
            # a fresh system prompt and conversations per run: no run inherits another's cache
            results.append(
                asyncio.run(
                    _run_policy(
                        f"2 x {policy}",
                        policy,
                        "tiny",
                        pair,
                        procs,
                        namespace,
                        workload,
                        seed=2 + index,
                    )
                )
            )
        return results
    finally:
        procs.stop()


def _report(results: list[RunResult]) -> None:
    baseline = results[0].hit_rate
    print(
        f"{'run':<22} {'hit rate':>9} {'vs 1 rep':>9} {'max/mean run':>13} {'TTFT mean':>10} {'p50':>8} {'p90':>8} {'wall s':>7}  prompt tokens per replica"
    )
    for result in results:
        ttft = sorted(result.ttft_s)
        p50, p90 = ttft[len(ttft) // 2], ttft[int(len(ttft) * 0.9)]
        ratio = result.hit_rate / baseline if baseline else 0.0
        print(
            f"{result.label:<22} {result.hit_rate:9.3f} {ratio:9.2f} {result.balance:13.2f} "
            f"{statistics.fmean(ttft) * 1000:8.0f}ms {p50 * 1000:6.0f}ms {p90 * 1000:6.0f}ms {result.wall_s:7.1f}  "
            f"{result.requests_by_replica}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("micro")
    m.add_argument("--blocks", type=int, default=100_000)
    m.add_argument("--replicas", type=int, default=16)
    m.add_argument("--prompt-blocks", type=int, default=128)
    m.add_argument("--matched-blocks", type=int, default=64)
    m.add_argument("--trials", type=int, default=2000)
    w = sub.add_parser("macro")
    w.add_argument("--conversations", type=int, default=12)
    w.add_argument("--turns", type=int, default=5)
    w.add_argument("--system-tokens", type=int, default=256)
    w.add_argument("--context-tokens", type=int, default=1536)
    w.add_argument("--user-tokens", type=int, default=64)
    w.add_argument("--output-tokens", type=int, default=16)
    w.add_argument(
        "--policies", default="round_robin,least_load,prefix_aware:kv_blocks,prefix_aware"
    )
    w.add_argument("--logs", type=Path, default=Path("/tmp/oss-serve-routing-bench"))
    args = parser.parse_args()
    if args.mode == "micro":
        micro(args.blocks, args.replicas, args.prompt_blocks, args.matched_blocks, args.trials)
        return
    workload = Workload(
        args.conversations,
        args.turns,
        args.system_tokens,
        args.context_tokens,
        args.user_tokens,
        args.output_tokens,
    )
    print(f"workload: {workload}")
    _report(macro(workload, args.policies.split(","), args.logs))


if __name__ == "__main__":
    main()
