"""How much the pipelined engine core saves on a Ray TP replica: the same workload through
`EngineCore` (schedule -> execute -> post-process in series) and `PipelinedEngineCore`
(step N+1 runs on the ranks while step N is detokenized), on one replica.

    RAY_AUTH_MODE=disabled python -m oss_serve.benchmarks.ray_pipelining \
        [--model gpt-oss-tiny] [--tp 2] [--requests 32] [--max-tokens 48] [--rounds 3]

Prints wall time per round and the ratio of the medians (plain / pipelined), measured in
the same run on the same actors.
"""

from __future__ import annotations

import argparse
import statistics
import time

from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.engine_core import EngineCore
from oss_serve.workers.engine.sampling_params import RequestOutputKind, SamplingParams


def _run(core: EngineCore, requests: int, max_tokens: int, tag: str) -> float:
    params = SamplingParams(
        temperature=0, max_tokens=max_tokens, ignore_eos=True, output_kind=RequestOutputKind.DELTA
    )
    started = time.perf_counter()
    for index in range(requests):
        core.add_request(f"{tag}-{index}", list(range(100 + index, 140 + index)), params)
    while core.has_unfinished_requests():
        core.step()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt-oss-tiny")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import ray

    from oss_serve.cluster.ray.executor import RayEngineOptions, RayExecutor
    from oss_serve.workers.engine.pipelined_core import PipelinedEngineCore

    ray.init(include_dashboard=False, log_to_driver=False)
    config = EngineConfig(
        model=args.model, tensor_parallel_size=args.tp, dtype="float32", device="cpu",
        experts_format="dense", kv_cache_memory=64 << 20, max_model_len=512,
    )  # fmt: skip
    executor = RayExecutor(config, RayEngineOptions(cpus_per_rank=0.5))
    cores = {
        "plain": EngineCore.from_config(config, executor),
        "pipelined": PipelinedEngineCore.from_config(config, executor),
    }
    times: dict[str, list[float]] = {name: [] for name in cores}
    for round_index in range(args.rounds):
        for name, core in cores.items():
            seconds = _run(core, args.requests, args.max_tokens, f"{name}{round_index}")
            times[name].append(seconds)
            tokens_per_s = args.requests * args.max_tokens / seconds
            print(f"round {round_index} {name:9s} {seconds:6.2f} s  {tokens_per_s:7.1f} tok/s")
    plain, pipelined = (statistics.median(times[n]) for n in ("plain", "pipelined"))
    print(f"median plain {plain:.2f} s, pipelined {pipelined:.2f} s: ratio {plain / pipelined:.2f}")
    executor.shutdown()


if __name__ == "__main__":
    main()
