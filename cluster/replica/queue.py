"""A replica's side of the Redis queues: register and heartbeat, pull in priority order,
take over dead replicas' work, acknowledge only finished requests.

Streams a replica reads, highest priority first, for each lane (interactive, then batch):
its own stream, the shared overflow stream, then the streams of replicas declared dead.
A replica is dead when its heartbeat key has been gone for `dead_after_s` as this replica
saw it (so a Redis restart, after which every key reappears within a heartbeat, does not
make everyone dead). Live replicas touch the entries they run every heartbeat (XCLAIM to
themselves, JUSTID), so an entry idle for `dead_after_s` has no live holder: XAUTOCLAIM
with that idle time takes over exactly the dead replicas' entries, and they are resumed.

Acknowledging checks ownership in one Lua step: an entry is XACKed + XDELed only by the
consumer that holds it in the group's pending list, so a replica whose request was taken
over (it was wrongly thought dead) can never acknowledge the new owner's delivery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from oss_serve.common.logging import get_logger
from oss_serve.protos import replica_link_pb2
from oss_serve.streams.backlog import undelivered
from oss_serve.streams.keys import CONSUMER_GROUP, LANES, OVERFLOW, RedisKeys
from oss_serve.streams.records import decode_record
from oss_serve.streams.registry import ReplicaLoad

log = get_logger(__name__)

# KEYS: stream, dead-letter stream. ARGV: group, entry id, consumer, dead-letter reason ('' =
# none), request id, replica id, raw record. Returns 1 when acknowledged by its owner.
_ACK_SCRIPT = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if pending[1] == nil or pending[1][2] ~= ARGV[3] then
  return 0
end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '100000', '*', 'request_id', ARGV[5],
             'reason', ARGV[4], 'replica_id', ARGV[6], 'stream', KEYS[1], 'entry_id', ARGV[2],
             'record', ARGV[7])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""

# KEYS: streams (one per id). ARGV: group, consumer, entry ids. Reset the idle time of the
# entries this consumer still holds (never takes over another consumer's entry).
_TOUCH_SCRIPT = """
local touched = 0
for i, stream in ipairs(KEYS) do
  local id = ARGV[i + 2]
  local pending = redis.call('XPENDING', stream, ARGV[1], id, id, 1)
  if pending[1] ~= nil and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', stream, ARGV[1], ARGV[2], 0, id, 'JUSTID')
    touched = touched + 1
  end
end
return touched
"""


@dataclass(frozen=True)
class Delivery:
    """One request entry this replica holds in a stream's pending list."""

    stream: str
    entry_id: str
    record: replica_link_pb2.QueueRecord | None  # None: deleted (withdrawn) after delivery
    delivery_count: int
    raw_record: bytes = b""


class ReplicaQueue:
    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        replica_id: str,
        *,
        heartbeat_ttl_s: float = 3.0,
        dead_after_s: float | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.replica_id = replica_id
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.dead_after_s = heartbeat_ttl_s if dead_after_s is None else dead_after_s
        self._ack = redis.register_script(_ACK_SCRIPT)
        self._touch = redis.register_script(_TOUCH_SCRIPT)
        self._missing_since: dict[str, float] = {}
        self.dead_replicas: list[str] = []
        self._pulls = 0
        self._next_sweep = time.monotonic() + self.dead_after_s

    # --- registry -----------------------------------------------------------------------

    async def register(self, load: ReplicaLoad) -> None:
        """Create the consumer groups this replica reads and publish its first heartbeat."""
        for stream in self._keys.replica_streams(self.replica_id) + self._overflow_streams():
            await self._ensure_group(stream)
        await self.heartbeat(load)

    async def heartbeat(self, load: ReplicaLoad) -> None:
        key = self._keys.replica(self.replica_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=load.to_fields())  # type: ignore[arg-type]
            pipe.pexpire(key, int(self.heartbeat_ttl_s * 1000))
            pipe.sadd(self._keys.replicas, self.replica_id)
            await pipe.execute()

    async def deregister(self) -> None:
        """Leave the registry; entries still in this replica's streams go to the others."""
        await self._redis.delete(self._keys.replica(self.replica_id))

    async def queued(self) -> int:
        """Entries in this replica's own streams that it has not pulled yet."""
        return await undelivered(self._redis, self._keys.replica_streams(self.replica_id))

    # --- pulling --------------------------------------------------------------------------

    def read_order(self, overflow_first: bool = False) -> list[str]:
        """Streams in the order they are read: per lane, own and overflow (in the order
        asked), then dead replicas'."""
        order = []
        for lane in LANES:
            own = self._keys.request_stream(self.replica_id, lane)
            shared = self._keys.overflow_stream(lane)
            order.extend([shared, own] if overflow_first else [own, shared])
            order.extend(self._keys.request_stream(dead, lane) for dead in self.dead_replicas)
        return order

    async def pull(self, block_ms: int = 0) -> list[Delivery]:
        """The next undelivered entry in priority order; if none, wait up to block_ms for any.

        Own stream and overflow take turns to be read first, so that under sustained load
        (the own stream never empty) the overflow entries are not starved.
        A wait can return one entry from each of several streams: all are this replica's.
        """
        self._pulls += 1
        streams = self.read_order(overflow_first=self._pulls % 2 == 0)
        for stream in streams:
            got = await self._read_group({stream: ">"}, block_ms=None)
            if got:
                return got
        if block_ms <= 0:
            return []
        return await self._read_group(dict.fromkeys(streams, ">"), block_ms=block_ms)

    async def own_pending(self) -> list[Delivery]:
        """Entries this replica id held before a restart (its pending list), to resume."""
        held: list[Delivery] = []
        for stream in self._keys.replica_streams(self.replica_id) + self._overflow_streams():
            while True:
                reply = await self._xreadgroup({stream: "0"}, count=100, block_ms=None)
                batch = [d for d in reply if d.entry_id not in {h.entry_id for h in held}]
                if not batch:
                    break
                held.extend(batch)
        return [await self._with_delivery_count(d) for d in held]

    async def claim_from_dead(self, count: int = 1) -> list[Delivery]:
        """XAUTOCLAIM up to `count` entries left by dead replicas (idle for dead_after_s).

        Once every dead_after_s this replica's own streams and the overflow are swept too:
        an entry there idle that long has no live holder either (a Redis failover can lose
        the acknowledgement of a finished request); its Start tells whether it still runs.
        """
        streams: list[str] = []
        if self.dead_replicas:
            streams = self._overflow_streams()
        for dead in self.dead_replicas:
            streams = self._keys.replica_streams(dead) + streams
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.dead_after_s
            own = self._keys.replica_streams(self.replica_id) + self._overflow_streams()
            streams = [*own, *(s for s in streams if s not in own)]
        claimed: list[Delivery] = []
        for stream in streams:
            if len(claimed) >= count:
                break
            claimed.extend(await self._claim(stream, count - len(claimed)))
        return claimed

    async def touch(self, deliveries: list[Delivery]) -> int:
        """Reset the idle time of entries this replica is running (proof of life per entry)."""
        if not deliveries:
            return 0
        keys = [d.stream for d in deliveries]
        args = [CONSUMER_GROUP, self.replica_id, *(d.entry_id for d in deliveries)]
        return int(await self._touch(keys=keys, args=args))

    # --- finishing ------------------------------------------------------------------------

    async def ack(self, delivery: Delivery, dead_letter_reason: str = "") -> bool:
        """XACK + XDEL the entry if this replica still owns it (optionally dead-lettering it)."""
        request_id = delivery.record.request_id if delivery.record else ""
        result = await self._ack(
            keys=[delivery.stream, self._keys.dead_letters],
            args=[
                CONSUMER_GROUP,
                delivery.entry_id,
                self.replica_id,
                dead_letter_reason,
                request_id,
                self.replica_id,
                delivery.raw_record,
            ],
        )
        return bool(result)

    # --- dead replicas --------------------------------------------------------------------

    async def refresh_dead_replicas(self) -> list[str]:
        """Update which registered replicas are dead (heartbeat gone for dead_after_s)."""
        raw_members: Any = await self._redis.smembers(self._keys.replicas)
        members = sorted(m.decode() for m in raw_members)
        others = [m for m in members if m != self.replica_id]
        async with self._redis.pipeline(transaction=False) as pipe:
            for replica in others:
                pipe.exists(self._keys.replica(replica))
            alive_flags = await pipe.execute()
        now = time.monotonic()
        dead = []
        for replica, alive in zip(others, alive_flags, strict=True):
            if alive:
                self._missing_since.pop(replica, None)
                continue
            first_missing = self._missing_since.setdefault(replica, now)
            if now - first_missing >= self.dead_after_s:
                dead.append(replica)
        for gone in set(self._missing_since) - set(others):
            del self._missing_since[gone]
        if dead != self.dead_replicas:
            log.info("dead replicas changed", replica_id=self.replica_id, dead=",".join(dead))
        self.dead_replicas = dead
        return dead

    def forget_observations(self) -> None:
        """After losing Redis for a while, start dead-detection afresh (keys reappear)."""
        self._missing_since.clear()
        self.dead_replicas = []

    async def remove_if_drained(self, replica: str) -> bool:
        """Drop a dead replica from the registry once its streams hold nothing."""
        streams = self._keys.replica_streams(replica)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xlen(stream)
            lengths = await pipe.execute()
        if any(lengths):
            return False
        await self._redis.srem(self._keys.replicas, replica)
        await self._redis.delete(*streams)
        self._missing_since.pop(replica, None)
        return True

    # --- helpers --------------------------------------------------------------------------

    def _overflow_streams(self) -> list[str]:
        return [self._keys.request_stream(OVERFLOW, lane) for lane in LANES]

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self._redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    async def _read_group(self, streams: dict[str, str], block_ms: int | None) -> list[Delivery]:
        return await self._xreadgroup(streams, count=1, block_ms=block_ms)

    async def _xreadgroup(
        self, streams: dict[str, str], *, count: int, block_ms: int | None
    ) -> list[Delivery]:
        try:
            reply: Any = await self._redis.xreadgroup(
                CONSUMER_GROUP,
                self.replica_id,
                dict(streams),  # type: ignore[arg-type]
                count=count,
                block=block_ms,
            )
        except redis_errors.ResponseError as err:
            if "NOGROUP" not in str(err):
                raise
            for stream in streams:  # Redis lost its groups (restart without AOF): recreate ours
                if self._is_mine(stream):
                    await self._ensure_group(stream)
            return []
        fresh = all(position == ">" for position in streams.values())
        deliveries = []
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                deliveries.append(self._delivery(stream, entry_id, fields, 1 if fresh else 0))
        return deliveries

    def _is_mine(self, stream: str) -> bool:
        mine = self._keys.replica_streams(self.replica_id) + self._overflow_streams()
        return stream in mine

    async def _claim(self, stream: str, count: int) -> list[Delivery]:
        try:
            reply = await self._redis.xautoclaim(
                stream,
                CONSUMER_GROUP,
                self.replica_id,
                min_idle_time=int(self.dead_after_s * 1000),
                start_id="0-0",
                count=count,
            )
        except redis_errors.ResponseError as err:
            if "NOGROUP" in str(err):
                return []
            raise
        entries = reply[1] if len(reply) > 1 else []
        claimed = [
            await self._with_delivery_count(self._delivery(stream, entry_id, fields, 0))
            for entry_id, fields in entries
        ]
        if claimed:
            log.info(
                "claimed idle entries",
                replica_id=self.replica_id,
                stream=stream,
                count=len(claimed),
            )
        return claimed

    def _delivery(
        self, stream: bytes | str, entry_id: bytes | str, fields: object, count: int
    ) -> Delivery:
        stream_name = stream.decode() if isinstance(stream, bytes) else stream
        entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        raw = fields.get(b"record", b"") if isinstance(fields, dict) else b""
        return Delivery(
            stream_name,
            entry,
            decode_record(fields if isinstance(fields, dict) else None),
            count,
            raw,
        )

    async def _with_delivery_count(self, delivery: Delivery) -> Delivery:
        """Read the entry's delivery count (a claim or re-read raises it) from XPENDING."""
        rows = await self._redis.xpending_range(
            delivery.stream, CONSUMER_GROUP, min=delivery.entry_id, max=delivery.entry_id, count=1
        )
        count = int(rows[0]["times_delivered"]) if rows else 1
        return Delivery(
            delivery.stream, delivery.entry_id, delivery.record, count, delivery.raw_record
        )
