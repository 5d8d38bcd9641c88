"""The Redis side of background responses: who runs each one, its lease, cancel requests,
and its streamed events, shared by every router.

A background response has, beside its stored record (`ResponseStore`):

- a run hash `{ns}:response-run:{id}`: `status`, `key_id` (the API key that created it),
  `stream` (events are kept), `owner` (the router running it) with `lease_until_ms` (Redis
  time), `cancel` (set by whichever router received the cancel), and while it runs
  `response`, the response so far (a poll answers it);
- when created with `stream: true`, an event stream `{ns}:response-events:{id}`: entry id
  `0-(sequence_number + 1)`, fields `type` and `event` (the event's JSON), closed by an
  entry with the field `end`; at most MAX_EVENTS are kept.

One writer at a time: only the owner writes while its lease holds (every owner write checks
`owner` in a script, and answers whether a cancel was requested). The owner renews its
lease every RENEW_INTERVAL_S; a router that dies stops renewing, and once the lease has
lapsed the first reader finalizes the response as failed (or cancelled, when a cancel was
asked for) and removes the owner, so that a late write of the old owner is refused.
A cancel is a flag in the run hash that the owner reads on its next write or renewal
(within RENEW_INTERVAL_S while no event flows): any router can receive it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from oss_serve.streams.keys import RedisKeys

LEASE_S = 10.0  # a run whose owner stopped renewing this long is reported failed
RENEW_INTERVAL_S = 1.0  # owner renewals: also how soon an idle run sees a cancel
MAX_EVENTS = 50_000  # events kept per streamed response (older ones are trimmed)
RUNNING = ("queued", "in_progress")

_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Appends (entry id, type, event) triples from ARGV[first] on to KEYS[3]; an empty type is
# the end marker.
_APPEND = """
local function append(first, ttl_ms, max_events)
  if #ARGV < first then return end
  for i = first, #ARGV, 3 do
    if ARGV[i + 1] == '' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', max_events, ARGV[i], 'end', '1')
    else
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', max_events, ARGV[i],
                 'type', ARGV[i + 1], 'event', ARGV[i + 2])
    end
  end
  redis.call('PEXPIRE', KEYS[3], ttl_ms)
end
"""

# KEYS: record, run, events. ARGV: record, key_id, owner, lease ms, ttl ms, stream,
# max events, then event triples.
_BEGIN = (
    _NOW_MS
    + _APPEND
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[2], 'status', 'queued', 'key_id', ARGV[2], 'owner', ARGV[3],
           'lease_until_ms', now_ms + tonumber(ARGV[4]), 'stream', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
append(8, ARGV[5], ARGV[7])
return 1
"""
)

# KEYS: record, run, events. ARGV: owner, lease ms, ttl ms, max events, status ('' keeps it),
# response so far ('' keeps it), final record ('' while running), then event triples.
# Returns 'lost' (not the owner any more), 'cancel' (a cancel was asked for) or 'ok'.
_OWNED = (
    _NOW_MS
    + _APPEND
    + """
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then return 'lost' end
append(8, ARGV[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'status', ARGV[5]) end
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[1], ARGV[7], 'PX', ARGV[3])
  redis.call('HDEL', KEYS[2], 'owner', 'lease_until_ms', 'response')
else
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'response', ARGV[6]) end
  redis.call('HSET', KEYS[2], 'lease_until_ms', now_ms + tonumber(ARGV[2]))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if redis.call('HGET', KEYS[2], 'cancel') then return 'cancel' end
return 'ok'
"""
)

# KEYS: run. Returns 1 when the run was still running (the flag is set), else 0.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'in_progress' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1')
return 1
"""

# KEYS: record, run, events. ARGV: final record, status, ttl ms, max events, the last event
# entry id seen ('' for none), then event triples. Finalizes a run whose lease lapsed;
# 1 when done, 0 when it is not abandoned (or events moved on meanwhile).
_ABANDON = (
    _NOW_MS
    + _APPEND
    + """
local run = redis.call('HMGET', KEYS[2], 'status', 'lease_until_ms')
if run[1] ~= 'queued' and run[1] ~= 'in_progress' then return 0 end
if tonumber(run[2] or '0') > now_ms then return 0 end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local last_id = ''
if #last > 0 then last_id = last[1][1] end
if last_id ~= ARGV[5] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], 'status', ARGV[2])
redis.call('HDEL', KEYS[2], 'owner', 'lease_until_ms', 'response')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
append(6, ARGV[3], ARGV[4])
return 1
"""
)


@dataclass(frozen=True)
class RunState:
    """What a reader sees of a background run."""

    status: str
    key_id: str
    stream: bool
    cancel_requested: bool
    owner: str
    lease_until_ms: int
    response: dict[str, Any] | None  # the response so far, while it runs

    @property
    def running(self) -> bool:
        return self.status in RUNNING


@dataclass(frozen=True)
class StoredEvent:
    """An event to append: its sequence number, type and JSON text."""

    sequence_number: int
    type: str
    json_text: str

    @classmethod
    def of(cls, event: dict[str, Any]) -> StoredEvent:
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        return cls(int(event["sequence_number"]), str(event["type"]), text)

    @classmethod
    def end(cls, sequence_number: int) -> StoredEvent:
        """The marker after the last event: readers stop there."""
        return cls(sequence_number, "", "")


END_FIELD = b"end"


def entry_id(sequence_number: int) -> str:
    """The event stream's entry id of a sequence number (ids start above 0-0)."""
    return f"0-{sequence_number + 1}"


def sequence_of(entry: bytes | str) -> int:
    text = entry.decode() if isinstance(entry, bytes) else entry
    return int(text.split("-", 1)[1]) - 1


def record_json(response_json: str, input_json: str, tool_session: str | None = None) -> str:
    """The stored record (`ResponseStore`'s format) from already encoded parts."""
    session = "" if tool_session is None else f',"tool_session":{json.dumps(tool_session)}'
    return f'{{"response":{response_json},"input":{input_json}{session}}}'


class BackgroundRuns:
    def __init__(self, redis: Redis, keys: RedisKeys, ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self.ttl_ms = str(int(ttl_s * 1000))
        self.lease_s = LEASE_S
        self._begin = redis.register_script(_BEGIN)
        self._owned = redis.register_script(_OWNED)
        self._cancel = redis.register_script(_CANCEL)
        self._abandon = redis.register_script(_ABANDON)

    def _keys_of(self, response_id: str) -> list[str]:
        keys = self._keys
        return [
            keys.response(response_id),
            keys.response_run(response_id),
            keys.response_events(response_id),
        ]

    async def begin(
        self,
        response_id: str,
        record: str,
        *,
        key_id: str,
        owner: str,
        stream: bool,
        events: Sequence[StoredEvent],
    ) -> None:
        await self._begin(
            keys=self._keys_of(response_id),
            args=[
                record,
                key_id,
                owner,
                str(int(self.lease_s * 1000)),
                self.ttl_ms,
                "1" if stream else "0",
                str(MAX_EVENTS),
                *_triples(events),
            ],
        )

    async def write(
        self,
        response_id: str,
        owner: str,
        *,
        events: Sequence[StoredEvent] = (),
        status: str = "",
        response: str = "",
        final_record: str = "",
    ) -> str:
        """An owner's write (events, status, the response so far, or the final record);
        renews the lease. 'ok', 'cancel' (asked to stop) or 'lost' (not the owner)."""
        reply = await self._owned(
            keys=self._keys_of(response_id),
            args=[
                owner,
                str(int(self.lease_s * 1000)),
                self.ttl_ms,
                str(MAX_EVENTS),
                status,
                response,
                final_record,
                *_triples(events),
            ],
        )
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def renew(self, owner: str, response_ids: list[str]) -> dict[str, str]:
        """Renew the leases of the runs `owner` runs: each id's 'ok', 'cancel' or 'lost'."""
        if not response_ids:
            return {}
        lease_ms = str(int(self.lease_s * 1000))
        async with self._redis.pipeline(transaction=False) as pipe:
            for response_id in response_ids:
                await self._owned(
                    keys=self._keys_of(response_id),
                    args=[owner, lease_ms, self.ttl_ms, str(MAX_EVENTS), "", "", ""],
                    client=pipe,
                )
            replies = await pipe.execute()
        return {
            response_id: reply.decode() if isinstance(reply, bytes) else str(reply)
            for response_id, reply in zip(response_ids, replies, strict=True)
        }

    async def request_cancel(self, response_id: str) -> bool:
        """Ask the owner to stop; False when the run has already ended."""
        return bool(await self._cancel(keys=[self._keys.response_run(response_id)]))

    async def state(self, response_id: str) -> RunState | None:
        raw: Any = await self._redis.hgetall(self._keys.response_run(response_id))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        response = fields.get("response")
        return RunState(
            status=fields.get("status", ""),
            key_id=fields.get("key_id", ""),
            stream=fields.get("stream") == "1",
            cancel_requested="cancel" in fields,
            owner=fields.get("owner", ""),
            lease_until_ms=int(fields.get("lease_until_ms") or 0),
            response=json.loads(response) if response else None,
        )

    async def lapsed(self, run: RunState) -> bool:
        """Whether a running run's lease has lapsed (by Redis's clock, as the owner's)."""
        if not run.running:
            return False
        seconds, micros = await self._redis.time()
        return run.lease_until_ms <= int(seconds) * 1000 + int(micros) // 1000

    async def last_sequence(self, response_id: str) -> int:
        """The last sequence number in the event stream (-1 when none)."""
        last: Any = await self._redis.xrevrange(self._keys.response_events(response_id), count=1)
        return sequence_of(last[0][0]) if last else -1

    async def first_sequence(self, response_id: str) -> int | None:
        """The oldest sequence number still kept (None when there are no events)."""
        first: Any = await self._redis.xrange(self._keys.response_events(response_id), count=1)
        return sequence_of(first[0][0]) if first else None

    async def abandon(
        self,
        response_id: str,
        record: str,
        status: str,
        last_sequence: int,
        events: Sequence[StoredEvent],
    ) -> bool:
        """Finalize a run whose lease lapsed (no-op, False, when it did not)."""
        last_id = entry_id(last_sequence) if last_sequence >= 0 else ""
        return bool(
            await self._abandon(
                keys=self._keys_of(response_id),
                args=[record, status, self.ttl_ms, str(MAX_EVENTS), last_id, *_triples(events)],
            )
        )

    async def read_many(
        self, cursors: dict[str, int], block_ms: int
    ) -> dict[str, list[tuple[int, dict[bytes, bytes]]]]:
        """Events of several responses after each one's sequence number, waiting up to
        block_ms for the first: response id -> (sequence number, fields) in order."""
        ids = {self._keys.response_events(response_id): response_id for response_id in cursors}
        streams = {key: entry_id(cursors[response_id]) for key, response_id in ids.items()}
        reply: Any = await self._redis.xread(streams, count=256, block=block_ms)  # type: ignore[arg-type]
        found: dict[str, list[tuple[int, dict[bytes, bytes]]]] = {}
        for key, stream_entries in reply or ():
            name = key.decode() if isinstance(key, bytes) else key
            found[ids[name]] = [(sequence_of(entry), fields) for entry, fields in stream_entries]
        return found


def _triples(events: Sequence[StoredEvent]) -> list[str]:
    args: list[str] = []
    for event in events:
        args += [entry_id(event.sequence_number), event.type, event.json_text]
    return args
