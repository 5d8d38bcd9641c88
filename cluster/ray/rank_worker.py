"""One rank of a replica, as a Ray actor: its process group, model shard, KV cache and runner.

Every rank runs the engine's model runner on each step's SchedulerOutput, so the
collectives inside the forward (attention all-reduce, MoE partial sums, logits gather)
line up across ranks. Rank 0's sampled tokens are the replica's: the driver sends them
back to the other ranks with the next step, and a rank whose own sample differed adopts
rank 0's (and counts it), so the ranks' copies of each sequence can never drift apart.
Each rank samples with its own logits processors, rebuilt from the recipes the step
carries (step_message.py): processor objects never cross the process boundary.

`health` runs on its own thread (Ray concurrency group "control"), so a rank answers
while a long forward pass or a stuck collective holds the main one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

import ray
import torch

from oss_serve.cluster.ray.communication import (
    ReplicaTopology,
    backend_for,
    build_parallel_context,
    destroy_process_group,
    free_port,
    init_process_group,
)
from oss_serve.cluster.ray.shard_loader import TensorRead, load_shard, tensor_bytes
from oss_serve.cluster.ray.step_message import RankProcessors, StepMessage
from oss_serve.common.logging import get_logger
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.kv_cache_spec import KVCacheSpec
from oss_serve.workers.engine.scheduler_output import ModelRunnerOutput
from oss_serve.workers.runner.executor import LocalExecutor, resolve_device, resolve_dtype

log = get_logger(__name__)

CONTROL_GROUP = "control"


@dataclass(frozen=True)
class ShardReport:
    """What a rank loaded: its place, its bytes, and every checkpoint slice it read."""

    rank: int
    tp_rank: int
    tp_size: int
    ep_rank: int
    ep_size: int
    device: str
    backend: str
    parameter_bytes: int
    bytes_read: int
    load_s: float
    reads: tuple[TensorRead, ...]
    model_config: Any  # ModelConfig (plain numbers)


@dataclass(frozen=True)
class RankHealth:
    rank: int
    pid: int
    node_ip: str
    steps_run: int
    divergent_tokens: int  # samples that differed from rank 0's (expected: 0)
    kv_cache_shape: tuple[int, ...]  # one layer: [2, blocks, block_size, local kv heads, head_dim]
    gpu_ids: tuple[str, ...] = ()  # the GPU Ray reserved for this rank (none on CPU)


class RankWorker:
    """Plain class (testable without Ray); `remote_class()` makes it the actor."""

    def __init__(self, rank: int, topology: ReplicaTopology, config: EngineConfig) -> None:
        self.rank = rank
        self.topology = topology
        self.config = config
        self.executor: LocalExecutor | None = None
        self.next_step = 0
        self.divergent_tokens = 0
        self.processors = RankProcessors(rank)

    def rendezvous_address(self) -> tuple[str, int]:
        """(node address, free port): rank 0 hosts the process group's TCP rendezvous."""
        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int, collective_timeout_s: float) -> ShardReport:
        """Join the process group, build the ParallelContext and load this rank's shard."""
        started = time.perf_counter()
        device = resolve_device(self.config.device)
        if device.type == "cuda":
            device = torch.device("cuda", 0)  # Ray shows each rank only its own GPU
            torch.cuda.set_device(device)
        backend = backend_for(device.type)
        init_process_group(
            backend=backend,
            rank=self.rank,
            world_size=self.topology.world_size,
            master_addr=master_addr,
            master_port=master_port,
            timeout_s=collective_timeout_s,
        )
        parallel = build_parallel_context(self.topology, self.rank)
        assert self.config.model is not None
        model, reads = load_shard(
            self.config.model,
            parallel=parallel,
            device=device,
            dtype=resolve_dtype(self.config.dtype, device),
            experts_format=self.config.experts_format,  # type: ignore[arg-type]
            seed=self.config.seed,
        )
        config = dataclasses.replace(self.config, device=str(device))
        self.executor = LocalExecutor(config, model=model, parallel=parallel)
        report = ShardReport(
            rank=self.rank,
            tp_rank=parallel.tp_rank,
            tp_size=parallel.tp_size,
            ep_rank=parallel.ep_rank,
            ep_size=parallel.ep_size,
            device=str(device),
            backend=backend,
            parameter_bytes=tensor_bytes(model),
            bytes_read=sum(read.num_bytes for read in reads),
            load_s=time.perf_counter() - started,
            reads=tuple(reads),
            model_config=model.config,
        )
        log.info(
            "rank loaded",
            rank=self.rank,
            tp_rank=report.tp_rank,
            ep_rank=report.ep_rank,
            parameter_bytes=report.parameter_bytes,
            bytes_read=report.bytes_read,
            load_s=round(report.load_s, 2),
        )
        return report

    def _executor(self) -> LocalExecutor:
        if self.executor is None:
            raise RuntimeError(f"rank {self.rank} is not set up (call setup first)")
        return self.executor

    def kv_cache_spec(self) -> KVCacheSpec:
        return self._executor().kv_cache_spec()

    def available_kv_cache_bytes(self) -> int:
        return self._executor().available_kv_cache_bytes()

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self._executor().initialize_kv_cache(num_blocks)

    def execute(self, message: StepMessage) -> ModelRunnerOutput | None:
        """Run one step; only rank 0 returns its output (the others' would be the same)."""
        if message.step_index != self.next_step:
            raise RuntimeError(
                f"rank {self.rank} got step {message.step_index}, expected {self.next_step}"
            )
        self.next_step += 1
        executor = self._executor()
        if self.rank != 0:
            states = executor.runner.states.states
            self.divergent_tokens += self.processors.adopt_rank0_tokens(
                states, message.rank0_tokens
            )
        output = executor.execute_model(self.processors.unpack(message))
        return output if self.rank == 0 else None

    @ray.method(concurrency_group=CONTROL_GROUP)
    def health(self) -> RankHealth:
        caches = self.executor.runner.kv_caches if self.executor is not None else []
        return RankHealth(
            rank=self.rank,
            pid=os.getpid(),
            node_ip=ray.util.get_node_ip_address(),
            steps_run=self.next_step,
            divergent_tokens=self.divergent_tokens,
            kv_cache_shape=tuple(caches[0].shape) if caches else (),
            gpu_ids=tuple(str(i) for i in ray.get_gpu_ids()),
        )

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()
        destroy_process_group()


def remote_class(**actor_options: Any) -> Any:
    """RankWorker as a Ray actor class: one thread for steps, one for health checks."""
    actor_class = ray.remote(concurrency_groups={CONTROL_GROUP: 1})  # type: ignore[call-overload]
    return actor_class(RankWorker).options(**actor_options)
