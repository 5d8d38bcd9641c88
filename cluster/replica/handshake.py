"""The Start handshake with a delivery's owning router, and its retries.

The router answers Start with the tokens its client already has, so generation resumes
after them; it refuses a request that is finished, cancelled, a duplicate or another
replica's now. A broken link means handshaking again once it is back (the router may
have restarted); a router that stays away for `router_link_grace_s` means its client is
gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from oss_serve.cluster.replica.config import ReplicaConfig
from oss_serve.cluster.replica.outcome import Outcome
from oss_serve.cluster.replica.queue import Delivery
from oss_serve.cluster.replica.router_link import LinkDown, RequestSession, RouterLink, RouterLinks
from oss_serve.protos import replica_link_pb2

START_TIMEOUT_S = 5.0
RECONNECT_DELAY_S = 0.2
MAX_ATTEMPTS_PER_DELIVERY = 50  # link breaks survived by one delivery before giving up

# generates one accepted delivery on its session, after the tokens the router already has
Generate = Callable[[RouterLink, RequestSession, Delivery, list[int]], Awaitable[Outcome]]


class RouterHandshake:
    def __init__(self, links: RouterLinks, config: ReplicaConfig) -> None:
        self.links = links
        self.config = config

    async def run(self, delivery: Delivery, generate: Generate) -> Outcome:
        """Handshake and generate, again after each broken link, until an outcome."""
        record = delivery.record
        if record is None:  # withdrawn after delivery
            return Outcome("done")
        link = self.links.get(record.reply_to)
        gave_up_at = time.monotonic() + self.config.router_link_grace_s
        for _ in range(MAX_ATTEMPTS_PER_DELIVERY):
            try:
                await link.connect()
            except LinkDown:
                if time.monotonic() > gave_up_at:
                    break
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            outcome = await self._attempt(link, delivery, generate)
            if outcome.kind != "retry":
                return outcome
            gave_up_at = time.monotonic() + self.config.router_link_grace_s
        return Outcome("unreachable", f"owning router {record.reply_to} unreachable")

    async def _attempt(self, link: RouterLink, delivery: Delivery, generate: Generate) -> Outcome:
        """One Start handshake and, if accepted, one generation."""
        record = delivery.record
        assert record is not None
        session = link.open(record.request_id, delivery.entry_id)
        try:
            start = replica_link_pb2.Start(
                request_id=record.request_id,
                entry_id=delivery.entry_id,
                replica_id=self.config.replica_id,
                delivery_count=delivery.delivery_count,
            )
            try:
                reply = await link.start(session, start, START_TIMEOUT_S)
            except LinkDown:
                return Outcome("retry")
            if not reply.accept:  # finished, cancelled, duplicate or unknown: nothing to run
                return Outcome("superseded" if reply.reason == "superseded" else "done")
            return await generate(link, session, delivery, list(reply.emitted_token_ids))
        finally:
            link.close(session)
