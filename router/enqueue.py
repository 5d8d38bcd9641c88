"""The router's side of the request streams: enqueue, withdraw, sticky sessions."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from oss_serve.common.logging import get_logger
from oss_serve.protos import replica_link_pb2
from oss_serve.streams.backlog import undelivered
from oss_serve.streams.keys import LANES, OVERFLOW, RedisKeys
from oss_serve.streams.records import encode_record
from oss_serve.streams.redis_client import retry_transient

log = get_logger(__name__)

# XADD only while the target replica's heartbeat key lives: an entry is never left in the
# stream of a replica that routers can no longer see (the overflow stream has no key).
_ENQUEUE_SCRIPT = """
if ARGV[1] ~= '' and redis.call('EXISTS', ARGV[1]) == 0 then
  return false
end
local id = redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SET', ARGV[4], ARGV[5], 'PX', ARGV[6])
end
return id
"""


class ReplicaGone(Exception):
    """The chosen replica's heartbeat expired between routing and enqueueing."""


class RequestQueue:
    """XADD request records to replica (or overflow) streams, with Redis-restart retries.

    With `replica_acks` > 0 an enqueue counts only once that many Redis replicas hold the
    record (WAIT on the same connection, up to `replica_ack_timeout_ms`): a failover to a
    replica then loses no request a client was told is queued.
    """

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        *,
        retry_timeout_s: float = 15.0,
        replica_acks: int = 0,
        replica_ack_timeout_ms: int = 500,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._retry_timeout_s = retry_timeout_s
        self._replica_acks = replica_acks
        self._replica_ack_timeout_ms = replica_ack_timeout_ms
        self._enqueue = redis.register_script(_ENQUEUE_SCRIPT)

    async def enqueue(
        self,
        target: str,
        record: replica_link_pb2.QueueRecord,
        *,
        session_key: str | None = None,
        session_ttl_s: float = 0.0,
    ) -> tuple[str, str]:
        """Append `record` to `target`'s stream for its lane; returns (stream key, entry id).

        With a session key, the session's replica is set to `target` in the same step.
        """
        stream = self._keys.request_stream(target, record.lane)
        alive_key = "" if target == OVERFLOW else self._keys.replica(target)
        ((field, payload),) = encode_record(record).items()
        session = self._keys.session(session_key) if session_key and target != OVERFLOW else ""
        ttl_ms = str(max(1, int(session_ttl_s * 1000)))
        args: list[str | bytes] = [alive_key, field, payload, session, target, ttl_ms]

        async def run() -> Any:
            if not self._replica_acks:
                return await self._enqueue(keys=[stream], args=args)
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._enqueue(keys=[stream], args=args, client=pipe)
                pipe.wait(self._replica_acks, self._replica_ack_timeout_ms)
                added, acks = await pipe.execute()
            if added is not None and acks < self._replica_acks:
                log.warning("request queued on fewer Redis replicas than asked", replicas=acks)
            return added

        entry_id = await retry_transient(
            run, what="enqueueing a request", timeout_s=self._retry_timeout_s
        )
        if entry_id is None:
            raise ReplicaGone(target)
        return stream, entry_id.decode()

    async def withdraw(self, stream: str, entry_id: str) -> bool:
        """Delete an entry (a cancelled request); a replica that already pulled it is told at Start."""

        async def run() -> Any:
            return await self._redis.xdel(stream, entry_id)

        return bool(
            await retry_transient(
                run, what="withdrawing a request", timeout_s=self._retry_timeout_s
            )
        )

    async def overflow_backlog(self) -> int:
        """Entries waiting in the shared overflow streams (not yet pulled by any replica)."""
        return await undelivered(self._redis, [self._keys.overflow_stream(lane) for lane in LANES])

    async def session_replica(self, session_key: str) -> str | None:
        value: Any = await self._redis.get(self._keys.session(session_key))
        return value.decode() if value else None
