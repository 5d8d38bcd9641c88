"""TTFT of a burst through the replica's queue pull: admission by capacity vs one per step.

    OSS_SERVE_VOCAB_DIR=/work/shared/vocab python -m oss_serve.benchmarks.admission_burst

A redis-server, an in-process router and an in-process replica (AsyncEngine on
gpt-oss-tiny, random weights) serve a burst of `--requests` concurrent Generate calls.
Two admission modes are compared in the same run, alternating rounds:
- `capacity`: the replica pulls as many entries as the engine's admission capacity (free
  batch slots and KV blocks, counting requests still starting) allows, at once;
- `per-step` (the baseline, the earlier behaviour): the engine admits nothing while any
  request is waiting or submitted but not yet taken in, and one request at a time, so a
  burst enters about one request per engine step.
Reports client-side TTFT (mean, p50, p90, max) per mode and the ratio baseline / capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from oss_serve.benchmarks.routing import Processes


class PerStepAdmission:
    """The baseline: an AsyncEngine whose admission lets one request in per engine step."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def admission_capacity(self) -> Any:
        from oss_serve.workers.engine.admission import AdmissionCapacity

        engine = self._engine
        if engine._promised or engine.stats().waiting:
            return AdmissionCapacity.none()
        capacity = engine.admission_capacity()
        return dataclasses.replace(capacity, num_requests=min(1, capacity.num_requests))


async def _burst(
    address: str, num_requests: int, prompt_tokens: int, output_tokens: int, tag: str
) -> list[float]:
    import grpc

    from oss_serve.protos import inference_pb2, inference_pb2_grpc

    async def one(index: int, stub: Any) -> float:
        prompt = [1000 + (hash((tag, index, i)) % 190_000) for i in range(prompt_tokens)]
        request = inference_pb2.GenerateRequest(
            prompt_token_ids=prompt,
            sampling=inference_pb2.SamplingParams(
                temperature=0, max_tokens=output_tokens, ignore_eos=True
            ),
        )
        started = time.perf_counter()
        ttft = 0.0
        async for chunk in stub.Generate(request):
            if chunk.token_ids and not ttft:
                ttft = time.perf_counter() - started
        return ttft

    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        return list(await asyncio.gather(*(one(i, stub) for i in range(num_requests))))


async def _run(args: argparse.Namespace, redis_url: str) -> dict[str, list[list[float]]]:
    import torch

    from oss_serve.cluster.replica.config import ReplicaConfig
    from oss_serve.cluster.replica.queue import ReplicaQueue
    from oss_serve.cluster.replica.service import ReplicaService
    from oss_serve.common.settings import Settings
    from oss_serve.router.server import RouterServer
    from oss_serve.streams.keys import RedisKeys
    from oss_serve.streams.redis_client import connect
    from oss_serve.workers.engine.async_engine import AsyncEngine
    from oss_serve.workers.engine.engine_config import EngineConfig
    from oss_serve.workers.engine.sampling_params import SamplingParams

    torch.set_num_threads(args.threads)
    engine = AsyncEngine(
        EngineConfig(model="gpt-oss-tiny", max_model_len=1024, kv_cache_memory=256 << 20,
                     enable_prefix_caching=False)
    )  # fmt: skip
    await engine.start()
    redis = connect(redis_url)
    results: dict[str, list[list[float]]] = {"capacity": [], "per-step": []}
    try:
        for round_index in range(args.rounds):
            for mode in ("per-step", "capacity"):
                namespace = f"burst-{uuid.uuid4().hex[:6]}"
                keys = RedisKeys(namespace)
                queue = ReplicaQueue(redis, keys, "burst", heartbeat_ttl_s=2.0)
                service = ReplicaService(
                    engine if mode == "capacity" else PerStepAdmission(engine),
                    queue,
                    ReplicaConfig(replica_id="burst", model="gpt-oss-tiny", max_model_len=1024),
                    make_sampling_params=SamplingParams.from_dict,
                )
                await service.start()
                router = RouterServer(
                    Settings.model_validate(
                        {"redis_url": redis_url, "redis_namespace": namespace, "grpc_port": 0}
                    )
                )
                await router.start()
                await router.wait_for_replicas(1)
                ttfts = await _burst(router.address, args.requests, args.prompt_tokens,
                                     args.output_tokens, f"{mode}-{round_index}")  # fmt: skip
                results[mode].append(ttfts)
                await router.stop()
                await service.stop()
                print(f"round {round_index} {mode:>9}: TTFT mean {statistics.fmean(ttfts) * 1e3:7.1f} ms, "
                      f"max {max(ttfts) * 1e3:7.1f} ms", flush=True)  # fmt: skip
    finally:
        await redis.aclose()
        await engine.shutdown()
    return results


def _report(results: dict[str, list[list[float]]]) -> None:
    print(f"{'mode':>9} {'mean ms':>8} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}")
    means = {}
    for mode, rounds in results.items():
        ttfts = sorted(t for run in rounds for t in run)
        means[mode] = statistics.fmean(ttfts)
        p50, p90 = ttfts[len(ttfts) // 2], ttfts[int(len(ttfts) * 0.9)]
        print(f"{mode:>9} {means[mode] * 1e3:8.1f} {p50 * 1e3:8.1f} {p90 * 1e3:8.1f} "
              f"{ttfts[-1] * 1e3:8.1f}")  # fmt: skip
    print(f"TTFT mean per-step / capacity: {means['per-step'] / means['capacity']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="oss-serve-burst-"))
    procs = Processes(folder)
    try:
        time.sleep(0.3)
        _report(asyncio.run(_run(args, procs.redis_url)))
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
