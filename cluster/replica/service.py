"""A model replica serving requests from Redis: pull when the engine can admit, run,
stream output to the owning router, acknowledge when finished.

The replica is a host for any engine with the AsyncEngine interface (`ReplicaEngine`):
a single-process AsyncEngine, or a TP/EP engine whose ranks are Ray actors
(cluster/ray/engine.py) with the same methods. Nothing here imports Ray or torch.

One module per job, joined here: the heartbeat (heartbeat.py), pulling under
back-pressure (puller.py), the Start handshake with the owning router and its retries
(handshake.py), pumping the engine's output onto the link (pump.py), acknowledging and
dead-lettering (acks.py) and telling the router of a failure (failures.py). Per
delivery: refuse it if it is past its deadline or delivered too often, else handshake
and generate, then acknowledge as the outcome says.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from oss_serve.cluster.replica.acks import acknowledge
from oss_serve.cluster.replica.adapter_sync import AdapterSync
from oss_serve.cluster.replica.config import ReplicaConfig
from oss_serve.cluster.replica.engine_protocol import ReplicaEngine
from oss_serve.cluster.replica.failures import FailureNotices
from oss_serve.cluster.replica.handshake import RouterHandshake
from oss_serve.cluster.replica.heartbeat import Heartbeat
from oss_serve.cluster.replica.inflight import InFlight
from oss_serve.cluster.replica.outcome import Outcome
from oss_serve.cluster.replica.puller import Puller
from oss_serve.cluster.replica.pump import EnginePump
from oss_serve.cluster.replica.queue import Delivery, ReplicaQueue
from oss_serve.cluster.replica.router_link import RouterLinks
from oss_serve.common.logging import get_logger
from oss_serve.common.tasks import stop_tasks
from oss_serve.streams.kv_events import KvEventPublisher
from oss_serve.streams.redis_client import TRANSIENT_ERRORS

log = get_logger(__name__)
DRAIN_POLL_S = 0.05


class ReplicaService:
    def __init__(
        self,
        engine: ReplicaEngine,
        queue: ReplicaQueue,
        config: ReplicaConfig,
        *,
        make_sampling_params: Callable[[dict[str, Any]], Any],
        kv_events: KvEventPublisher | None = None,
        adapters: AdapterSync | None = None,
        links: RouterLinks | None = None,
    ) -> None:
        self.engine = engine
        self.adapters = adapters  # follows runtime LoRA load/unload orders
        self.queue = queue
        self.config = config
        self.links = links or RouterLinks(config.replica_id)
        self.kv_events = kv_events
        self.inflight = InFlight()
        self.heartbeat = Heartbeat(engine, queue, config, self.inflight, adapters)
        self.puller = Puller(engine, queue, config, self.inflight, self._start_serving)
        self.handshake = RouterHandshake(self.links, config)
        self.pump = EnginePump(engine, config, make_sampling_params, self.inflight)
        self.failures = FailureNotices(self.links, config.replica_id)
        self._serving: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.fatal = asyncio.Event()  # set when the engine died: the host should exit

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.kv_events is not None:
            self.kv_events.publish_cleared()
            await self.kv_events.flush()
        await self.queue.register(self.heartbeat.load_report(queued=0))
        resumed = await self.queue.own_pending()
        self._loops = [
            asyncio.create_task(self.puller.run(resumed)),
            asyncio.create_task(self.heartbeat.run()),
        ]
        if self.kv_events is not None:
            self._loops.append(asyncio.create_task(self.kv_events.run()))
        if self.adapters is not None:
            self._loops.append(asyncio.create_task(self.adapters.run()))
        log.info(
            "replica serving",
            replica_id=self.config.replica_id,
            model=self.config.model,
            resumed=len(resumed),
        )

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Take no more requests, let running ones finish, leave the registry."""
        self.puller.stopped = self.heartbeat.draining = True
        deadline = time.monotonic() + timeout_s
        while self.inflight.deliveries and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        await self.stop()

    async def stop(self) -> None:
        self.puller.stopped = self.heartbeat.draining = self.heartbeat.stopped = True
        if self.kv_events is not None:
            self.kv_events.stop()
        if self.adapters is not None:
            self.adapters.stop()
        await stop_tasks([*self._loops, *self._serving])
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self.queue.deregister()
        await self.links.aclose()

    # --- one delivery -----------------------------------------------------------------------

    def _start_serving(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._serve(delivery))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, delivery: Delivery) -> None:
        self.inflight.begin(delivery)
        try:
            reason = self._refusal(delivery)
            if reason:
                await self._fail(delivery, reason)
            else:
                await self._settle(delivery, await self.handshake.run(delivery, self.pump.run))
        except Exception as err:
            await self._fail_unexpectedly(delivery, err)
        finally:
            self.inflight.end(delivery.entry_id)

    def _refusal(self, delivery: Delivery) -> str:
        """Why a delivery is not run at all ("" when it is)."""
        record = delivery.record
        if record is None:
            return ""
        if record.deadline_unix_s and time.time() > record.deadline_unix_s:
            return "its deadline passed before it started"
        if delivery.delivery_count > self.config.max_delivery_attempts:
            return f"delivered {delivery.delivery_count} times without finishing"
        return ""

    async def _settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Acknowledge as the outcome says (a superseded entry is another replica's now)."""
        if outcome.kind == "failed":
            self.failures.send(delivery, outcome.reason, invalid=outcome.invalid)
            await acknowledge(self.queue, delivery, dead_letter_reason=outcome.reason)
        elif outcome.kind == "unreachable":
            await acknowledge(self.queue, delivery, dead_letter_reason=outcome.reason)
        elif outcome.kind == "done":
            await acknowledge(self.queue, delivery)

    async def _fail(self, delivery: Delivery, reason: str) -> None:
        await acknowledge(self.queue, delivery, dead_letter_reason=reason)
        await self.failures.notify(delivery, reason)

    async def _fail_unexpectedly(self, delivery: Delivery, err: Exception) -> None:
        """An engine that died leaves the entry pending for another replica (this process
        exits: see `fatal`); any other error fails the request for good, with the reason."""
        if not self.engine.is_running:
            log.error(
                "engine stopped; leaving the entry to another replica", entry_id=delivery.entry_id
            )
            self.fatal.set()
            return
        log.exception("request handling failed", entry_id=delivery.entry_id)
        await self._fail(delivery, f"replica error: {err!r}")
