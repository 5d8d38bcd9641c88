"""A router's picture of the replicas: the Redis registry, refreshed in the background,
plus what this router routed to each replica since that replica's last load report.

Replicas that vanish from the registry (heartbeat expired) or restart (new `started_ts`)
lose their blocks in the prefix index, so routing never trusts a cache that is gone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.asyncio import Redis

from oss_serve.common.logging import get_logger
from oss_serve.router.policies import Candidate
from oss_serve.router.prefix_index import PrefixIndex
from oss_serve.streams.backlog import undelivered
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.redis_client import TRANSIENT_ERRORS
from oss_serve.streams.registry import ReplicaLoad, read_registry

log = get_logger(__name__)


@dataclass
class _Unreported:
    heartbeat_ts: float = 0.0
    requests: int = 0
    blocks: int = 0  # uncached prompt blocks of those requests


class ClusterView:
    def __init__(
        self, redis: Redis, keys: RedisKeys, index: PrefixIndex, *, refresh_interval_s: float = 0.2
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.index = index
        self.refresh_interval_s = refresh_interval_s
        self.replicas: dict[str, ReplicaLoad] = {}
        self._overflow_reported = 0
        self._overflow_unreported = 0  # routed to overflow by this router since the last read
        self.redis_ok = False
        self._unreported: dict[str, _Unreported] = {}
        self._refreshed = asyncio.Event()
        self._stopped = False

    async def refresh(self) -> None:
        replicas = await read_registry(self._redis, self._keys)
        overflow = [self._keys.overflow_stream(lane) for lane in ("interactive", "batch")]
        self._overflow_reported = await undelivered(self._redis, overflow)
        self._overflow_unreported = 0
        for replica_id, old in self.replicas.items():
            new = replicas.get(replica_id)
            if new is None or new.started_ts != old.started_ts:
                self.index.clear(replica_id)
        for replica_id, load in replicas.items():
            unreported = self._unreported.setdefault(replica_id, _Unreported(load.heartbeat_ts))
            if load.heartbeat_ts != unreported.heartbeat_ts:
                self._unreported[replica_id] = _Unreported(load.heartbeat_ts)
        for gone in set(self._unreported) - set(replicas):
            del self._unreported[gone]
        self.replicas = replicas
        self.redis_ok = True
        self._refreshed.set()

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        while not self._stopped:
            try:
                await self.refresh()
            except TRANSIENT_ERRORS as err:
                if self.redis_ok:
                    log.warning("registry unreadable, keeping the last view", error=str(err))
                self.redis_ok = False
            await asyncio.sleep(self.refresh_interval_s)

    async def wait_ready(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._refreshed.wait(), timeout_s)

    def models(self) -> dict[str, int]:
        """Served model name -> its max model length, over healthy replicas."""
        served: dict[str, int] = {}
        for load in self.replicas.values():
            if not load.draining:
                served[load.model] = max(served.get(load.model, 0), load.max_model_len)
        return served

    def adapters(self) -> dict[str, str]:
        """LoRA adapter name -> the base model it runs on, over healthy replicas."""
        served: dict[str, str] = {}
        for load in self.replicas.values():
            if not load.draining:
                served.update(dict.fromkeys(load.adapters, load.model))
        return served

    def is_adapter(self, model: str) -> bool:
        """Does `model` name a LoRA adapter (rather than a base model) here?"""
        return bool(model) and model not in self.models() and model in self.adapters()

    def candidates(self, model: str) -> list[Candidate]:
        """Healthy, non-draining replicas serving `model` ('' = any base model; a LoRA
        adapter's name = the replicas serving that adapter), with local counts."""
        chosen = []
        for replica_id, load in self.replicas.items():
            serves = not model or load.model == model or model in load.adapters
            if load.draining or not serves:
                continue
            unreported = self._unreported.get(replica_id, _Unreported())
            chosen.append(Candidate(load, unreported.requests, unreported.blocks))
        return chosen

    @property
    def overflow_backlog(self) -> int:
        """Requests waiting in the shared overflow streams, as far as this router knows."""
        return self._overflow_reported + self._overflow_unreported

    def note_overflow(self) -> None:
        self._overflow_unreported += 1

    def note_routed(self, replica_id: str, uncached_blocks: int) -> None:
        unreported = self._unreported.get(replica_id)
        if unreported is not None:
            unreported.requests += 1
            unreported.blocks += uncached_blocks
