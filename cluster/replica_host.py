"""Run one replica in this process: a single-process AsyncEngine behind ReplicaService.

This is the replica host `oss-serve replica` uses until the cluster issue hosts the engine
in Ray actors (TP/EP): only `build_engine` changes then; the queue, the links to the
routers and the lifecycle stay as they are.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

from oss_serve.cluster.replica_queue import ReplicaQueue
from oss_serve.cluster.replica_service import ReplicaConfig, ReplicaService
from oss_serve.common.logging import get_logger
from oss_serve.common.redis_keys import RedisKeys
from oss_serve.common.settings import Settings
from oss_serve.router.queue.kv_events import KvEventPublisher
from oss_serve.router.queue.redis_client import connect

log = get_logger(__name__)


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def build_engine(settings: Settings, kv_event_sink: Any) -> Any:
    """The engine this host serves (imports torch; only the replica process does)."""
    from oss_serve.workers.async_engine import AsyncEngine
    from oss_serve.workers.engine_config import EngineConfig

    if settings.tensor_parallel_size > 1 or settings.expert_parallel_size > 1:
        raise ValueError(
            "tensor/expert parallel replicas run as Ray actors (the cluster issue); "
            "this host runs a single-process engine: use --tensor-parallel-size 1"
        )
    return AsyncEngine(
        EngineConfig(
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
            kv_event_sink=kv_event_sink,
        )
    )


def sampling_params_factory() -> Any:
    """SamplingParams from queued arguments, with the structured-output grammar processor."""
    from oss_serve.workers.structured_output import sampling_params_from_args

    return sampling_params_from_args


async def run_replica(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT (drain, then stop) or until the engine dies (exit 1)."""
    if settings.redis_url is None:
        raise ValueError("the replica needs --redis-url (or OSS_SERVE_REDIS_URL)")
    if not settings.model:
        raise ValueError("the replica needs --model (a checkpoint folder or a preset name)")
    replica_id = settings.replica_id or default_replica_id()
    redis = connect(settings.redis_url.get_secret_value())
    keys = RedisKeys(settings.redis_namespace)
    publisher = KvEventPublisher(
        redis, keys, replica_id, block_size=settings.block_size, maxlen=settings.kv_events_maxlen
    )
    engine = build_engine(settings, publisher.sink)
    await engine.start()
    config = ReplicaConfig(
        replica_id=replica_id,
        model=settings.served_model_name or settings.model,
        pool=settings.replica_pool,
        address=socket.gethostname(),
        block_size=settings.block_size,
        max_model_len=int(engine.core.max_model_len),
        heartbeat_interval_s=settings.heartbeat_interval_s,
        max_delivery_attempts=settings.max_delivery_attempts,
        router_link_grace_s=settings.router_link_grace_s,
    )
    queue = ReplicaQueue(redis, keys, replica_id, heartbeat_ttl_s=settings.heartbeat_ttl_s)
    service = ReplicaService(
        engine, queue, config, make_sampling_params=sampling_params_factory(), kv_events=publisher
    )
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stop_waiter = asyncio.create_task(stop.wait())
    fatal_waiter = asyncio.create_task(service.fatal.wait())
    await asyncio.wait({stop_waiter, fatal_waiter}, return_when=asyncio.FIRST_COMPLETED)
    if service.fatal.is_set():
        log.error("engine died: exiting so that another replica takes over", replica_id=replica_id)
        return 1
    log.info("draining", replica_id=replica_id)
    await service.drain()
    await engine.shutdown()
    await redis.aclose()
    return 0
