"""Acknowledging a delivery: XACK + XDEL once it has finished, optionally dead-lettering it
with the reason; only the owner's acknowledgement counts (ReplicaQueue.ack)."""

from __future__ import annotations

import asyncio

from oss_serve.cluster.replica.queue import Delivery, ReplicaQueue
from oss_serve.common.logging import get_logger
from oss_serve.streams.redis_client import TRANSIENT_ERRORS

log = get_logger(__name__)
RETRY_DELAY_S = 0.2


async def acknowledge(
    queue: ReplicaQueue, delivery: Delivery, dead_letter_reason: str = ""
) -> None:
    """Acknowledge, riding out a Redis restart (an unacknowledged entry would run again)."""
    while True:
        try:
            if not await queue.ack(delivery, dead_letter_reason):
                log.info("entry not acknowledged: no longer ours", entry_id=delivery.entry_id)
            return
        except TRANSIENT_ERRORS as err:
            log.warning("redis unreachable while acknowledging, retrying", error=str(err))
            await asyncio.sleep(RETRY_DELAY_S)
