"""An engine whose ranks are Ray actors (one per GPU, TP x EP), behind the AsyncEngine
interface that the replica host uses.

Lifecycle: `start()` reserves the placement group, starts one actor per rank, loads the
shards, sizes and allocates the KV cache, warms up, and reports the KV capacity;
`health()` asks every actor to answer; `drain()` takes no new requests and waits for the
running ones; `shutdown()` stops the engine, the actors and the placement group. A rank
that dies fails the whole replica within about a second (mid-step) or one health
interval (idle) with `RayEngineFailedError`; open requests end with `EngineDeadError`
naming the rank, and `is_running` turns False so the host can exit and re-queue.

    engine = RayEngine(EngineConfig(model=..., tensor_parallel_size=2, expert_parallel_size=2))
    await engine.start()
    async for out in engine.generate("id", prompt_token_ids, SamplingParams(max_tokens=16)): ...
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from oss_serve.cluster.ray.executor import RayEngineFailedError, RayEngineOptions, RayExecutor
from oss_serve.cluster.ray.rank_worker import RankHealth
from oss_serve.common.logging import get_logger
from oss_serve.workers.engine.admission import AdmissionCapacity
from oss_serve.workers.engine.async_engine import AsyncEngine, EngineDeadError
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.engine_core import EngineCore
from oss_serve.workers.engine.metrics import EngineStats
from oss_serve.workers.engine.outputs import RequestOutput
from oss_serve.workers.engine.pipelined_core import build_engine_core
from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.lora.request import LoRARequest

log = get_logger(__name__)

HEALTH_INTERVAL_S = 2.0
DRAIN_POLL_S = 0.05


class EngineDrainingError(EngineDeadError):
    """The engine is draining: it finishes what it runs and takes nothing new."""


@dataclass(frozen=True)
class RayEngineCapacity:
    """What a started RayEngine reports: KV room, shard sizes, start-up times."""

    world_size: int
    kv_blocks_total: int
    block_size: int
    kv_tokens_total: int
    kv_bytes_per_rank: int
    parameter_bytes_per_rank: tuple[int, ...]
    start_s: float
    warmup_s: float


class RayEngine:
    """A TP/EP replica's engine: the scheduler in this process, the shards in rank actors."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        options: RayEngineOptions | None = None,
        health_interval_s: float = HEALTH_INTERVAL_S,
        **engine_args: Any,
    ) -> None:
        self.config = config or EngineConfig.from_kwargs(**engine_args)
        self.options = options or RayEngineOptions()
        self.health_interval_s = health_interval_s
        self.engine: AsyncEngine | None = None
        self.executor: RayExecutor | None = None
        self.capacity: RayEngineCapacity | None = None
        self.failed = asyncio.Event()
        self._draining = False
        self._active_requests = 0
        self._monitor: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> RayEngineCapacity:
        """Load, warm up and start serving; returns the KV capacity (blocks and tokens)."""
        if self.capacity is not None:
            return self.capacity
        start_ranks = functools.partial(RayExecutor, options=self.options)
        core = await asyncio.to_thread(build_engine_core, self.config, start_ranks)
        self.executor = core.executor  # type: ignore[assignment]
        self.engine = AsyncEngine(self.config, core=core)
        await self.engine.start()
        self.capacity = self._capacity(core)
        self._monitor = asyncio.create_task(self._watch_health())
        log.info("ray engine started", **self.capacity.__dict__)
        return self.capacity

    def _capacity(self, core: EngineCore) -> RayEngineCapacity:
        executor = self._executor()
        spec = executor.kv_cache_spec()
        blocks = core.kv_cache.num_usable_blocks
        return RayEngineCapacity(
            world_size=executor.topology.world_size,
            kv_blocks_total=blocks,
            block_size=spec.block_size,
            kv_tokens_total=blocks * spec.block_size,
            kv_bytes_per_rank=executor.num_kv_blocks * spec.bytes_per_block,
            parameter_bytes_per_rank=tuple(r.parameter_bytes for r in executor.shard_reports),
            start_s=executor.start_s,
            warmup_s=executor.warmup_s,
        )

    async def health(self, timeout_s: float | None = None) -> list[RankHealth]:
        """Every rank answers within the timeout, or the replica fails (RayEngineFailedError)."""
        return await asyncio.to_thread(self._executor().check_health, timeout_s)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Take no new requests; wait until the running ones finish. False if time ran out."""
        self._draining = True
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while self._active_requests and self.is_running:
            if deadline is not None and loop.time() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_S)
        return self._active_requests == 0

    async def shutdown(self) -> None:
        """Stop the engine loop, the actors and the placement group."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self.engine is not None:
            await self.engine.shutdown()  # its core shuts the executor down
        elif self.executor is not None:
            self.executor.shutdown()

    async def wait_failed(self) -> RayEngineFailedError:
        """Resolves when a rank has failed (for a host that should exit and re-queue)."""
        await self.failed.wait()
        failure = self._executor().failure
        assert failure is not None
        return failure

    async def _watch_health(self) -> None:
        """Notice a dead rank while idle (a step notices by itself)."""
        executor = self._executor()
        while executor.failure is None:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self.health()
            except RayEngineFailedError:
                break
            except Exception as exc:  # Ray shutting down under us
                log.warning("health check failed", error=str(exc))
        log.error("ray engine failed", error=str(executor.failure))
        self.failed.set()

    # --- the AsyncEngine interface ------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return (
            self.engine is not None
            and self.engine.is_running
            and self.executor is not None
            and self.executor.failure is None
        )

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams | None = None,
        *,
        priority: int = 0,
        prompt: str | None = None,
        resume_output_token_ids: Sequence[int] = (),
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """AsyncEngine.generate; refuses new requests while draining or after a failure."""
        engine = self._engine()
        if self._draining:
            raise EngineDrainingError("the engine is draining and takes no new requests")
        self._active_requests += 1
        try:
            async for output in engine.generate(
                request_id, prompt_token_ids, sampling_params, priority=priority, prompt=prompt,
                resume_output_token_ids=resume_output_token_ids, lora_request=lora_request,
            ):  # fmt: skip
                yield output
        finally:
            self._active_requests -= 1

    async def abort(self, request_id: str) -> None:
        await self._engine().abort(request_id)

    async def add_lora(self, name: str, path: str) -> LoRARequest:
        """Checked on the driver; each rank reads its shard when a step first needs it."""
        return await self._engine().add_lora(name, path)

    async def remove_lora(self, name: str) -> bool:
        return await self._engine().remove_lora(name)

    def lora_request(self, name: str) -> LoRARequest | None:
        return self._engine().lora_request(name)

    def stats(self) -> EngineStats:
        if self.engine is None:
            raise EngineDeadError("the engine has not started")
        return self.engine.stats()

    def can_admit(self, num_prompt_tokens: int) -> bool:
        if self.engine is None or self._draining or not self.is_running:
            return False
        return self.engine.can_admit(num_prompt_tokens)

    def admission_capacity(self) -> AdmissionCapacity:
        if self.engine is None or self._draining or not self.is_running:
            return AdmissionCapacity.none()
        return self.engine.admission_capacity()

    def _engine(self) -> AsyncEngine:
        if self.executor is not None and self.executor.failure is not None:
            raise EngineDeadError(str(self.executor.failure))
        if self.engine is None:
            raise EngineDeadError("the engine is not running (call `await engine.start()`)")
        return self.engine

    def _executor(self) -> RayExecutor:
        if self.executor is None:
            raise EngineDeadError("the engine has not started")
        return self.executor
