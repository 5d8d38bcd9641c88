"""The replica's heartbeat: its load report in the registry, its held entries' claims kept
alive, and the dead replicas it notices cleaned up, every `heartbeat_interval_s`."""

from __future__ import annotations

import asyncio
import json
import time

from oss_serve.cluster.replica.adapter_sync import AdapterSync
from oss_serve.cluster.replica.config import ReplicaConfig
from oss_serve.cluster.replica.engine_protocol import ReplicaEngine
from oss_serve.cluster.replica.inflight import InFlight
from oss_serve.cluster.replica.queue import ReplicaQueue
from oss_serve.common.logging import get_logger
from oss_serve.streams.redis_client import TRANSIENT_ERRORS
from oss_serve.streams.registry import ReplicaLoad

log = get_logger(__name__)


class Heartbeat:
    def __init__(
        self,
        engine: ReplicaEngine,
        queue: ReplicaQueue,
        config: ReplicaConfig,
        inflight: InFlight,
        adapters: AdapterSync | None = None,
    ) -> None:
        self.engine = engine
        self.adapters = adapters
        self.queue = queue
        self.config = config
        self.inflight = inflight
        self.started_ts = time.time()
        self.draining = False  # reported, so that routers send nothing new
        self.stopped = False

    def load_report(self, *, queued: int) -> ReplicaLoad:
        stats = self.engine.stats()
        return ReplicaLoad(
            replica_id=self.config.replica_id,
            pool=self.config.pool,
            model=self.config.model,
            address=self.config.address,
            running=int(stats.running),
            waiting=int(stats.waiting),
            queued=queued,
            max_running=int(stats.max_running),
            kv_usage=float(stats.kv_usage),
            kv_blocks_free=int(stats.kv_blocks_free),
            kv_blocks_total=int(stats.kv_blocks_total),
            block_size=self.config.block_size,
            max_model_len=self.config.max_model_len,
            finished_per_s=self.inflight.finished_per_s(since_ts=self.started_ts),
            prefix_hits=int(stats.prefix_cache_hits),
            prefix_queries=int(stats.prefix_cache_queries),
            draining=self.draining,
            started_ts=self.started_ts,
            heartbeat_ts=time.time(),
            max_loras=self.config.max_loras,
            lora_adapters=",".join(stats.lora_adapters),
            lora_held=",".join(stats.lora_held),
            lora_errors=json.dumps(self.adapters.errors) if self.adapters else "",
        )

    async def run(self) -> None:
        """Beat until stopped, riding out Redis outages (other replicas are judged afresh
        once Redis is back: their heartbeats could not land either)."""
        outage_since: float | None = None
        while not self.stopped:
            try:
                await self.beat()
                if outage_since is not None:
                    self.queue.forget_observations()
                    outage_since = None
                await self.queue.refresh_dead_replicas()
                for dead in self.queue.dead_replicas:
                    await self.queue.remove_if_drained(dead)
            except TRANSIENT_ERRORS as err:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("redis unreachable from replica", error=str(err))
            await asyncio.sleep(self.config.heartbeat_interval_s)

    async def beat(self) -> None:
        report = self.load_report(queued=await self.queue.queued())
        await self.queue.heartbeat(report)
        await self.queue.touch(list(self.inflight.deliveries.values()))
