"""How much of a request stream is still waiting for a replica to take it."""

from __future__ import annotations

from redis.asyncio import Redis

from oss_serve.streams.keys import CONSUMER_GROUP


async def undelivered(redis: Redis, streams: list[str]) -> int:
    """Entries of `streams` not yet delivered to a consumer (length minus pending)."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xlen(stream)
            pipe.xpending(stream, CONSUMER_GROUP)
        replies = await pipe.execute(raise_on_error=False)
    total = 0
    for length, pending in zip(replies[::2], replies[1::2], strict=True):
        if isinstance(length, int):
            pending_count = pending.get("pending", 0) if isinstance(pending, dict) else 0
            total += max(0, length - int(pending_count))
    return total
