"""Pulling from the replica's queue only when the engine has room (back-pressure).

Entries this replica already owned (a restart) are served first, then dead replicas'
entries, then its own streams. A burst is pulled at once: each entry is taken while the
engine's admission capacity has a slot and KV blocks for it beside those still starting.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence

from oss_serve.cluster.replica.config import ReplicaConfig
from oss_serve.cluster.replica.engine_protocol import ReplicaEngine
from oss_serve.cluster.replica.inflight import InFlight
from oss_serve.cluster.replica.queue import Delivery, ReplicaQueue
from oss_serve.common.logging import get_logger
from oss_serve.streams.redis_client import TRANSIENT_ERRORS

log = get_logger(__name__)
CAPACITY_POLL_S = 0.01


class Puller:
    def __init__(
        self,
        engine: ReplicaEngine,
        queue: ReplicaQueue,
        config: ReplicaConfig,
        inflight: InFlight,
        serve: Callable[[Delivery], None],
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.config = config
        self.inflight = inflight
        self._serve = serve  # starts serving one delivery (without waiting for it)
        self.stopped = False

    async def run(self, resumed: Sequence[Delivery]) -> None:
        backlog = collections.deque(resumed)
        while not self.stopped:
            try:
                if not backlog:
                    if not self._has_room_for(self.config.block_size):
                        await self._wait_for_room()
                        continue
                    backlog.extend(
                        await self.queue.claim_from_dead(1)
                        or await self.queue.pull(self.config.pull_block_ms)
                    )
                    continue
                delivery = backlog[0]
                prompt_len = len(delivery.record.prompt_token_ids) if delivery.record else 0
                waits = delivery.record is not None and self.inflight.busy
                if waits and not self._has_room_for(prompt_len):
                    await self._wait_for_room()
                    continue
                backlog.popleft()
                if delivery.entry_id in self.inflight.deliveries:  # delivered again while it
                    continue  # runs here (a Redis failover lost the read): one run is enough
                self.inflight.pulled(delivery, prompt_len)
                self._serve(delivery)
            except TRANSIENT_ERRORS as err:
                log.warning("redis unreachable while pulling", error=str(err))
                await asyncio.sleep(0.2)

    def _has_room_for(self, prompt_len: int) -> bool:
        """Can the engine start this prompt too, beside those pulled and still starting?"""
        capacity = self.engine.admission_capacity()
        return bool(capacity.admits([*self.inflight.starting.values(), prompt_len]))

    async def _wait_for_room(self) -> None:
        """Until a delivery ends, or briefly (the engine frees room on its own too)."""
        self.inflight.ended.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.inflight.ended.wait(), CAPACITY_POLL_S)
