"""Telling a delivery's owning router that its request failed, so that the client gets an
error instead of waiting (best effort: a router that cannot be reached is not waited for)."""

from __future__ import annotations

import contextlib

from oss_serve.cluster.replica.queue import Delivery
from oss_serve.cluster.replica.router_link import LinkDown, RouterLinks
from oss_serve.protos import replica_link_pb2


class FailureNotices:
    def __init__(self, links: RouterLinks, replica_id: str) -> None:
        self.links = links
        self.replica_id = replica_id

    async def notify(self, delivery: Delivery, reason: str) -> None:
        """Connect to the owning router if needed, then send the failure."""
        if delivery.record is None:  # withdrawn: nobody waits for it
            return
        with contextlib.suppress(LinkDown):
            await self.links.get(delivery.record.reply_to).connect()
            self.send(delivery, reason, invalid=False)

    def send(self, delivery: Delivery, reason: str, *, invalid: bool) -> None:
        """Send the failure on the link if it is up; `invalid`: the request itself was bad."""
        record = delivery.record
        assert record is not None
        failure = replica_link_pb2.Failure(
            request_id=record.request_id,
            entry_id=delivery.entry_id,
            replica_id=self.replica_id,
            delivery_count=delivery.delivery_count,
            reason=reason,
            invalid_request=invalid,
        )
        with contextlib.suppress(LinkDown):
            self.links.get(record.reply_to).send(replica_link_pb2.ReplicaMessage(failure=failure))
