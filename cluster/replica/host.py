"""Run one replica in this process: its engine behind ReplicaService.

The engine is a single-process AsyncEngine for TP = EP = 1 (unless `ray_engine`), else a
Ray actor group (cluster/ray/engine.py: RayEngine) with the same interface; the queue, the
links to the routers and the lifecycle are the same either way. `oss-serve replica` runs
`run_replica`; `oss-serve up` hosts the same `start_replica_host` inside a Ray actor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from oss_serve.cluster.replica.adapter_sync import AdapterSync
from oss_serve.cluster.replica.config import ReplicaConfig
from oss_serve.cluster.replica.queue import ReplicaQueue
from oss_serve.cluster.replica.router_link import LinkSecurity, RouterLinks
from oss_serve.cluster.replica.service import ReplicaService
from oss_serve.common.logging import get_logger
from oss_serve.common.settings import Settings
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.kv_events import KvEventPublisher
from oss_serve.streams.redis_client import connect_from

log = get_logger(__name__)

LoadProgress = Callable[[int, int], None]  # (done_bytes, total_bytes) of the weights read


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def build_engine(
    settings: Settings, kv_event_sink: Any, load_progress: LoadProgress | None = None
) -> Any:
    """The engine this host serves (imports torch; only the replica process does).

    `load_progress` (single-process engine only) reports the weights as they are read;
    the model is then loaded here, so call this off the event loop.
    """
    from oss_serve.workers.engine.async_engine import AsyncEngine
    from oss_serve.workers.engine.engine_config import EngineConfig

    config = EngineConfig(
        model=settings.model,
        dtype=settings.dtype,
        device=settings.device,
        max_model_len=settings.max_model_len,
        block_size=settings.block_size,
        enable_prefix_caching=settings.enable_prefix_caching,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        kv_cache_memory=settings.kv_cache_memory,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        tensor_parallel_size=settings.tensor_parallel_size,
        expert_parallel_size=settings.expert_parallel_size,
        kv_event_sink=kv_event_sink,
        enforce_eager=settings.enforce_eager,
        cuda_graph_sizes=settings.cuda_graph_sizes,
        async_scheduling=settings.async_scheduling,
        enable_lora=settings.enable_lora,
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
        max_cpu_loras=settings.max_cpu_loras,
        lora_modules=settings.lora_module_paths,
    )
    sharded = settings.tensor_parallel_size > 1 or settings.expert_parallel_size > 1
    if sharded or settings.ray_engine:
        from oss_serve.cluster.ray.engine import RayEngine
        from oss_serve.cluster.ray.executor import RayEngineOptions

        # the placement group is named after the replica, so a host that replaces a dead
        # one can release it (a group outlives the actor that made it: it is the job's)
        options = dataclasses.replace(
            RayEngineOptions.from_settings(settings), name=settings.replica_id or ""
        )
        return RayEngine(config, options=options)
    if load_progress is None:
        return AsyncEngine(config)
    from oss_serve.workers.model.weights import load_model
    from oss_serve.workers.runner.executor import LocalExecutor, resolve_device, resolve_dtype

    device = resolve_device(config.device)
    model = load_model(
        str(config.model),
        device=device,
        dtype=resolve_dtype(config.dtype, device),
        experts_format=config.experts_format,  # type: ignore[arg-type]
        seed=config.seed,
        progress=load_progress,
    )
    return AsyncEngine(config, executor=LocalExecutor(config, model=model))


def sampling_params_factory() -> Any:
    """SamplingParams from queued arguments, with the structured-output grammar processor."""
    from oss_serve.workers.runner.structured_output import sampling_params_from_args

    return sampling_params_from_args


def _engine_max_model_len(engine: Any) -> int:
    """AsyncEngine has `.core`; a RayEngine wraps its AsyncEngine in `.engine`."""
    core = engine.core if hasattr(engine, "core") else engine.engine.core
    return int(core.max_model_len)


@dataclass
class ReplicaHost:
    """A started replica: its engine serving the Redis queue through ReplicaService."""

    replica_id: str
    engine: Any
    service: ReplicaService
    redis: Redis

    async def stop(self) -> None:
        """Drain (finish running requests, leave the registry), stop the engine."""
        log.info("draining", replica_id=self.replica_id)
        await self.service.drain()
        await self.engine.shutdown()
        await self.redis.aclose()


async def start_replica_host(
    settings: Settings, load_progress: LoadProgress | None = None
) -> ReplicaHost:
    """Load the engine, register in Redis and start pulling requests."""
    if settings.redis_url is None:
        raise ValueError("the replica needs --redis-url (or OSS_SERVE_REDIS_URL)")
    if not settings.model:
        raise ValueError("the replica needs --model (a checkpoint folder or a preset name)")
    replica_id = settings.replica_id or default_replica_id()
    link_security = LinkSecurity.from_settings(settings)  # bad TLS files: fail before loading
    redis = connect_from(settings)
    keys = RedisKeys(settings.redis_namespace)
    publisher = KvEventPublisher(
        redis,
        keys,
        replica_id,
        block_size=settings.block_size,
        maxlen=settings.kv_events_maxlen,
        snapshot_interval_s=settings.kv_snapshot_interval_s,
    )
    engine = await asyncio.to_thread(build_engine, settings, publisher.sink, load_progress)
    await engine.start()
    config = ReplicaConfig(
        replica_id=replica_id,
        model=settings.served_model_name or settings.model,
        pool=settings.replica_pool,
        address=socket.gethostname(),
        block_size=settings.block_size,
        max_model_len=_engine_max_model_len(engine),
        heartbeat_interval_s=settings.heartbeat_interval_s,
        max_delivery_attempts=settings.max_delivery_attempts,
        router_link_grace_s=settings.router_link_grace_s,
        max_loras=settings.max_loras if settings.enable_lora else 0,
    )
    queue = ReplicaQueue(redis, keys, replica_id, heartbeat_ttl_s=settings.heartbeat_ttl_s)
    service = ReplicaService(
        engine,
        queue,
        config,
        make_sampling_params=sampling_params_factory(),
        kv_events=publisher,
        adapters=AdapterSync(engine, redis, keys) if settings.enable_lora else None,
        links=RouterLinks(replica_id, link_security),
    )
    await service.start()
    return ReplicaHost(replica_id, engine, service, redis)


async def run_replica(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT (drain, then stop) or until the engine dies (exit 1)."""
    host = await start_replica_host(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stop_waiter = asyncio.create_task(stop.wait())
    fatal_waiter = asyncio.create_task(host.service.fatal.wait())
    await asyncio.wait({stop_waiter, fatal_waiter}, return_when=asyncio.FIRST_COMPLETED)
    if host.service.fatal.is_set():
        log.error(
            "engine died: exiting so that another replica takes over", replica_id=host.replica_id
        )
        return 1
    await host.stop()
    return 0
