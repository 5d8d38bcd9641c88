"""The driver side of a replica: ships each step to its Ray worker actors, returns rank 0's output.

The scheduler and the KV-cache manager stay in the driver (the engine core); the actors
hold the shards. Each step's SchedulerOutput is put into the object store once and every
rank reads it; `submit` returns at once so the engine can post-process the previous step
while the ranks compute (workers/engine/pipelined_core.py), `StepHandle.result()` waits.

Failure is all-or-nothing: a rank that dies or raises leaves the others blocked inside a
collective, so the first error (noticed within `FAILURE_POLL_S`) kills every actor,
releases the placement group and raises `RayEngineFailedError` naming the rank. Requests
then fail with that error and the replica's host re-queues them.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from oss_serve.cluster.ray import placement
from oss_serve.cluster.ray.communication import ReplicaTopology
from oss_serve.cluster.ray.rank_worker import RankHealth, ShardReport, remote_class
from oss_serve.cluster.ray.step_message import StepNotSendableError, check_portable, pack_step
from oss_serve.common.logging import get_logger
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.kv_cache_spec import KVCacheSpec
from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.engine.scheduler_output import (
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)

log = get_logger(__name__)

FAILURE_POLL_S = 0.05  # how often a waiting driver checks the other ranks for errors
ROOT_CAUSE_GRACE_S = 2.0  # after one rank's error, how long to wait for the others' reports
WARMUP_REQUEST_ID = "__oss_serve_warmup__"
FORWARDED_ENV_PREFIXES = ("OSS_SERVE_", "NCCL_", "GLOO_")


class RayEngineFailedError(RuntimeError):
    """A rank died, raised or stopped answering; every rank of the engine is stopped."""


@dataclass(frozen=True)
class RayEngineOptions:
    """How a RayEngine uses Ray (the model and parallel sizes live in EngineConfig)."""

    ray_address: str | None = None  # None: this process's Ray, else start a local one
    placement_strategy: str = "STRICT_PACK"
    cpus_per_rank: float | None = None  # None: 1 with GPUs, the CPUs shared out on CPU
    experts_across_all_ranks: bool = False  # EP over every rank (vLLM style) instead of EP slices
    placement_timeout_s: float = 60.0
    setup_timeout_s: float = 1800.0  # process group + loading the shard (120b from disk)
    step_timeout_s: float = 600.0  # one forward on every rank
    health_timeout_s: float = 10.0
    collective_timeout_s: float = 1800.0  # torch.distributed's own timeout (a last resort)
    name: str = ""  # placement group name, unique in the Ray namespace ("" = unnamed)
    pool: str | None = None  # GPU pool: ranks land only on nodes advertising its resource

    @classmethod
    def from_settings(cls, settings: Any) -> RayEngineOptions:
        """The Ray fields of common.settings.Settings (ray_address, placement, EP layout)."""
        return cls(
            ray_address=settings.ray_address,
            placement_strategy=settings.ray_placement_strategy,
            experts_across_all_ranks=settings.experts_across_all_ranks,
            pool=settings.replica_pool,
        )


class StepHandle:
    """One dispatched step; `result()` waits for every rank and returns rank 0's output."""

    def __init__(self, executor: RayExecutor, futures: list[ray.ObjectRef]) -> None:
        self._executor = executor
        self._futures = futures

    def result(self) -> ModelRunnerOutput:
        return self._executor._collect(self._futures)


class RayExecutor:
    """The engine's Executor for a TP x EP replica of Ray actors (one per GPU)."""

    def __init__(self, config: EngineConfig, options: RayEngineOptions | None = None) -> None:
        if config.model is None:
            raise ValueError("EngineConfig.model is required (a checkpoint folder or preset)")
        self.options = options or RayEngineOptions()
        self.topology = ReplicaTopology(
            config.tensor_parallel_size,
            config.expert_parallel_size,
            self.options.experts_across_all_ranks,
        )
        self.failure: RayEngineFailedError | None = None
        self._lock = threading.Lock()
        self._step_index = 0
        self._last_tokens: dict[str, int] = {}
        self._inflight = False
        self.workers: list[Any] = []
        self._group: Any = None
        placement.connect(self.options.ray_address)
        use_gpu = placement.wants_gpus(config.device)
        self.config = dataclasses.replace(
            config, kv_event_sink=None, device="cuda" if use_gpu else "cpu"
        )
        self.device_type = self.config.device
        try:
            self._start(use_gpu)
        except BaseException:
            self.shutdown()
            raise

    # --- start-up ---------------------------------------------------------------------------
    def _start(self, use_gpu: bool) -> None:
        started = time.perf_counter()
        world = self.topology.world_size
        resources = placement.rank_resources(
            world, use_gpu, self.options.cpus_per_rank, self.options.pool
        )
        self._group = placement.reserve(
            world,
            resources,
            strategy=self.options.placement_strategy,
            timeout_s=self.options.placement_timeout_s,
            name=self.options.name,
        )
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
        threads = max(1, int(resources.num_cpus))
        if not use_gpu:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        self.workers = [
            remote_class(
                **resources.actor_options(),
                scheduling_strategy=placement.bundle_strategy(self._group, rank),
                runtime_env={"env_vars": env},
                max_restarts=0,
            ).remote(rank, self.topology, self.config)
            for rank in range(world)
        ]
        address, port = self._gather(
            [self.workers[0].rendezvous_address.remote()], self.options.setup_timeout_s, "start"
        )[0]
        self.shard_reports: list[ShardReport] = self._gather(
            [
                w.setup.remote(address, port, self.options.collective_timeout_s)
                for w in self.workers
            ],
            self.options.setup_timeout_s,
            "setup (process group, loading the shard)",
        )
        self.model_config = self.shard_reports[0].model_config
        self._spec: KVCacheSpec = self._gather(
            [self.workers[0].kv_cache_spec.remote()], self.options.setup_timeout_s, "setup"
        )[0]
        self.start_s = time.perf_counter() - started
        log.info(
            "replica ranks loaded",
            world_size=world,
            tp=self.topology.tensor_parallel_size,
            ep=self.topology.expert_shards,
            backend=self.shard_reports[0].backend,
            bytes_per_rank=[r.parameter_bytes for r in self.shard_reports],
            start_s=round(self.start_s, 2),
        )

    # --- the Executor protocol -----------------------------------------------------------------
    def kv_cache_spec(self) -> KVCacheSpec:
        return self._spec

    def available_kv_cache_bytes(self) -> int:
        """The smallest rank's budget: every rank holds the same number of blocks."""
        budgets = self._gather(
            [w.available_kv_cache_bytes.remote() for w in self.workers],
            self.options.setup_timeout_s,
            "kv budget",
        )
        return int(min(budgets))

    def initialize_kv_cache(self, num_blocks: int) -> None:
        """Allocate every rank's cache (its heads only), then warm up with one tiny step."""
        self._gather(
            [w.initialize_kv_cache.remote(num_blocks) for w in self.workers],
            self.options.setup_timeout_s,
            "kv cache allocation",
        )
        self.num_kv_blocks = num_blocks
        started = time.perf_counter()
        self.execute_model(self._warmup_step())
        self.execute_model(SchedulerOutput(freed_request_ids={WARMUP_REQUEST_ID}))
        self._last_tokens = {}
        self.warmup_s = time.perf_counter() - started

    def _warmup_step(self) -> SchedulerOutput:
        """Two tokens into the null block 0 (never handed out), sampled: every collective runs."""
        request = NewRequestData(
            request_id=WARMUP_REQUEST_ID,
            token_ids=[0, 0],
            num_prompt_tokens=2,
            sampling_params=SamplingParams(max_tokens=1, temperature=0.0),
            seed=0,
            eos_token_ids=frozenset(),
            block_ids=[[0] for _ in self._spec.groups],
            num_computed_tokens=0,
        )
        return SchedulerOutput(new_requests=[request], num_scheduled_tokens={WARMUP_REQUEST_ID: 2})

    def check_request(self, params: SamplingParams) -> None:
        """Only plain data reaches the ranks: logits processors need recipes (step_message.py)."""
        check_portable(params)

    def execute_model(self, scheduled: SchedulerOutput) -> ModelRunnerOutput:
        return self.submit(scheduled).result()

    def submit(self, scheduled: SchedulerOutput) -> StepHandle:
        """Broadcast one step to every rank without waiting (one step in flight at a time)."""
        self._raise_if_failed()
        if self._inflight:
            raise RuntimeError("a step is already in flight: call result() on it first")
        try:
            message = ray.put(pack_step(self._step_index, scheduled, self._last_tokens))
        except Exception as exc:  # nothing was sent: the ranks still wait for this step index
            new = [data.request_id for data in scheduled.new_requests]
            cause = str(exc.__cause__ or exc).strip().splitlines() or [type(exc).__name__]
            raise StepNotSendableError(
                f"step {self._step_index} cannot be sent to the ranks (new requests {new}): "
                f"{cause[0][:300]}; requests are checked for this when added (check_request)"
            ) from exc
        self._step_index += 1
        self._inflight = True
        return StepHandle(self, [w.execute.remote(message) for w in self.workers])

    def _collect(self, futures: list[ray.ObjectRef]) -> ModelRunnerOutput:
        try:
            results = self._gather(futures, self.options.step_timeout_s, "a step")
        finally:
            self._inflight = False
        output: ModelRunnerOutput = results[0]
        self._last_tokens = {
            request_id: tokens[-1]
            for request_id, tokens in zip(output.request_ids, output.sampled_token_ids, strict=True)
            if tokens
        }
        return output

    # --- health and failure ----------------------------------------------------------------------
    def check_health(self, timeout_s: float | None = None) -> list[RankHealth]:
        """Every rank answers (on its control thread) or the replica fails."""
        self._raise_if_failed()
        timeout = self.options.health_timeout_s if timeout_s is None else timeout_s
        return self._gather([w.health.remote() for w in self.workers], timeout, "a health check")

    def _gather(self, futures: Sequence[ray.ObjectRef], timeout_s: float, what: str) -> list[Any]:
        """Results in rank order; the first rank error or the deadline fails the replica."""
        rank_of = {ref: rank for rank, ref in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        errors: dict[int, Exception] = {}
        pending = list(futures)
        deadline = time.monotonic() + timeout_s
        while pending and not errors:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                late = ", ".join(self.topology.describe(rank_of[ref]) for ref in pending)
                raise self._fail(f"{late} did not finish {what} within {timeout_s:.0f}s")
            ready, pending = ray.wait(
                pending, num_returns=len(pending), timeout=min(remaining, FAILURE_POLL_S)
            )
            self._fetch(ready, rank_of, results, errors)
        if errors:
            # A rank that died takes a moment longer to report than the ranks it left
            # stranded in a collective: give it that moment, so the error names the cause.
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=ROOT_CAUSE_GRACE_S)
            self._fetch(ready, rank_of, results, errors)
            raise self._fail(self._describe(errors, what))
        return results

    @staticmethod
    def _fetch(
        ready: list[ray.ObjectRef],
        rank_of: dict[ray.ObjectRef, int],
        results: list[Any],
        errors: dict[int, Exception],
    ) -> None:
        for ref in ready:
            try:
                results[rank_of[ref]] = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                errors[rank_of[ref]] = exc

    def _describe(self, errors: dict[int, Exception], what: str) -> str:
        """The dead ranks if any (the others' errors follow from them), else the first raise."""
        dead = sorted(rank for rank, exc in errors.items() if isinstance(exc, RayActorError))
        if dead:
            first_line = str(errors[dead[0]]).strip().splitlines()[0]
            ranks = ", ".join(self.topology.describe(rank) for rank in dead)
            return f"{ranks} died during {what} ({first_line})"
        rank = min(errors)
        exc = errors[rank]
        cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
        return f"{self.topology.describe(rank)} raised during {what}: {cause!r}"

    def _fail(self, reason: str) -> RayEngineFailedError:
        """Record the first failure, stop every actor and the placement group; returns the error."""
        with self._lock:
            if self.failure is None:
                self.failure = RayEngineFailedError(
                    f"replica failed: {reason}; all {self.topology.world_size} ranks were stopped"
                )
                log.error("replica failed", reason=reason)
                self._stop_actors()
            return self.failure

    def _raise_if_failed(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _stop_actors(self) -> None:
        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception as exc:  # already dead
                log.debug("actor kill failed", error=str(exc))
        placement.release(self._group)
        self._group = None

    def shutdown(self) -> None:
        with self._lock:
            self._stop_actors()
            self.workers = []
