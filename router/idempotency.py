"""The client retry contract: a request sent again with the same id (gRPC
`options.request_id`, HTTP `Idempotency-Key`) under the same API key gives the same
completion, or a clear 409.

Each choice of such a request has a record in Redis, `{ns}:idem:{key_id}:{id digest}:{choice}`:

- absent: the request runs; its record says `running`, owned by this router, with a short
  lease that the router renews while the request lives;
- `running` (a first attempt still in progress, on any router): 409 with a Retry-After of
  the lease left. A router that dies stops renewing, so a retry runs afresh after at most
  `lease_s`, while the replicas have already cancelled the dead router's requests;
- `done`: the stored completion (tokens, logprobs, finish reason, usage) is replayed,
  nothing runs, for `ttl_s` after it finished;
- a record made by a different request (another prompt or parameters): 409, never the
  other request's answer.

A request that fails or whose client goes away leaves no record: a retry runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from oss_serve.common.logging import get_logger
from oss_serve.common.tasks import detach
from oss_serve.protos import inference_pb2
from oss_serve.router.errors import IdempotencyConflict, Unavailable
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.redis_client import TRANSIENT_ERRORS

log = get_logger(__name__)

# KEYS: record. ARGV: fingerprint, owner, lease ms. A new record -> {'new'}; else what is there.
_BEGIN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'running', 'fingerprint', ARGV[1], 'owner', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'new'}
end
local fields = redis.call('HMGET', KEYS[1], 'state', 'fingerprint', 'result')
return {fields[1] or '', fields[2] or '', fields[3] or '', redis.call('PTTL', KEYS[1])}
"""

# KEYS: record. ARGV: owner, then 'done' + result + ttl ms, 'renew' + lease ms, or 'drop'.
_OWNED_SCRIPT = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1]
   or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
if ARGV[2] == 'done' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'result', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
elseif ARGV[2] == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""


@dataclass(frozen=True)
class IdempotentRequest:
    """Who asked (`key_id`), under which id, for which choice, and what exactly."""

    key_id: str
    request_id: str
    choice: int
    fingerprint: str


def fingerprint(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


class IdempotencyStore:
    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        owner: str,
        *,
        lease_s: float = 10.0,
        ttl_s: float = 24 * 3600.0,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._owner = owner
        self.lease_s = lease_s
        self.ttl_s = ttl_s
        self._begin = redis.register_script(_BEGIN_SCRIPT)
        self._owned = redis.register_script(_OWNED_SCRIPT)
        self._running: set[str] = set()  # records this router renews

    def record_key(self, request: IdempotentRequest) -> str:
        digest = hashlib.sha256(request.request_id.encode()).hexdigest()[:32]
        return self._keys.idempotency(request.key_id, digest, request.choice)

    async def run(
        self,
        request: IdempotentRequest,
        generate: Callable[[], AsyncIterator[Any]],
        replay: Callable[[inference_pb2.GenerateResponse], Any],
        completion: Callable[[list[Any]], inference_pb2.GenerateResponse],
    ) -> AsyncGenerator[Any, None]:
        """The chunks of `generate()` (recorded, then stored as `completion(chunks)` when the
        last one carries a finish), or `replay(stored)` of an earlier run."""
        key = self.record_key(request)
        stored = await self._claim(key, request)
        if stored is not None:
            yield replay(stored)
            return
        self._running.add(key)
        chunks: list[Any] = []
        finished = False
        try:
            async for chunk in generate():
                chunks.append(chunk)
                if chunk.finish_reason:  # stored before the client has it: a retry replays it
                    await self._store(key, completion(chunks))
                    finished = True
                yield chunk
        finally:
            self._running.discard(key)
            if not finished:
                detach(self._drop(key))

    async def renew(self) -> None:
        """Extend the lease of every record this router runs (call every lease_s / 3)."""
        lease_ms = str(int(self.lease_s * 1000))
        for key in list(self._running):
            await self._owned(keys=[key], args=[self._owner, "renew", lease_ms])

    async def renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew()
            except TRANSIENT_ERRORS as err:
                log.warning("could not renew idempotency leases", error=str(err))

    async def _claim(
        self, key: str, request: IdempotentRequest
    ) -> inference_pb2.GenerateResponse | None:
        try:
            reply: Any = await self._begin(
                keys=[key],
                args=[request.fingerprint, self._owner, str(int(self.lease_s * 1000))],
            )
        except TRANSIENT_ERRORS as err:
            raise Unavailable(
                f"the idempotency store (Redis) is unreachable; retry shortly ({err})"
            ) from err
        if reply[0] == b"new":
            return None
        state, stored_fingerprint, result, ttl_ms = reply
        if stored_fingerprint.decode() != request.fingerprint:
            raise IdempotencyConflict(
                f"request id {request.request_id!r} was already used for a different request "
                "under this API key: use a new id for a new request",
                field="request_id",
            )
        if state == b"done":
            return inference_pb2.GenerateResponse.FromString(result)
        retry_after_s = max(1.0, int(ttl_ms) / 1000 if int(ttl_ms) > 0 else self.lease_s)
        raise IdempotencyConflict(
            f"a request with id {request.request_id!r} is still in progress; "
            f"retry after {retry_after_s:.0f} s for its result",
            field="request_id",
            retry_after_s=retry_after_s,
        )

    async def _store(self, key: str, completion: inference_pb2.GenerateResponse) -> None:
        ttl_ms = str(int(self.ttl_s * 1000))
        try:
            await self._owned(
                keys=[key], args=[self._owner, "done", completion.SerializeToString(), ttl_ms]
            )
        except TRANSIENT_ERRORS as err:  # the answer still goes out; a retry would rerun
            log.warning("could not store a completion for retries", error=str(err))

    async def _drop(self, key: str) -> None:
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self._owned(keys=[key], args=[self._owner, "drop"])
