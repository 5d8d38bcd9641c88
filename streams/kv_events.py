"""Prefix-cache events through Redis: replicas publish blocks stored / evicted, every router
folds them into its PrefixIndex.

One stream (`{ns}:kv-events`), one entry per batch (a KvEventBatch protobuf), trimmed to
about `maxlen` entries. Each router reads it from the start with plain XREAD (no consumer
group: every router needs every event). A replica publishes CLEARED when it starts, so
routers drop what its previous incarnation held.

A hot prefix is stored once and then only hit, so its event may be trimmed away long before
it is evicted. Each replica therefore also keeps a snapshot of everything it has published
(`{ns}:kv-snapshot:{replica}`: the id of its last entry and a CLEARED + STORED batch),
rewritten every `snapshot_interval_s` when it changed. A router starts from the snapshots
and then applies only each replica's entries newer than its snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from typing import Any, Protocol

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from oss_serve.common.logging import get_logger
from oss_serve.protos import replica_link_pb2
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.redis_client import TRANSIENT_ERRORS

log = get_logger(__name__)
BATCH_FIELD = b"batch"
STREAM_ID_FIELD = b"stream_id"
STORED = replica_link_pb2.KvEvent.STORED
REMOVED = replica_link_pb2.KvEvent.REMOVED
CLEARED = replica_link_pb2.KvEvent.CLEARED
_FOLLOW_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, redis_errors.ResponseError)
_KIND_OF_NAME = {"stored": STORED, "removed": REMOVED, "cleared": CLEARED, "all_cleared": CLEARED}


def event_kind(name: str) -> int:
    """The protobuf kind of an engine event kind name ("stored", "removed", "cleared")."""
    try:
        return _KIND_OF_NAME[name.lower()]
    except KeyError:
        raise ValueError(f"unknown KV event kind {name!r}") from None


def stream_id(entry_id: bytes | str) -> tuple[int, int]:
    """A Redis stream id ("ms-seq") as a comparable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class BlockIndex(Protocol):
    """What a follower folds events into (the router's PrefixIndex)."""

    def store(self, replica_id: str, block_hashes: Iterable[int]) -> None: ...

    def remove(self, replica_id: str, block_hashes: Iterable[int]) -> None: ...

    def clear(self, replica_id: str) -> None: ...


def apply_batch(index: BlockIndex, batch: replica_link_pb2.KvEventBatch) -> None:
    for event in batch.events:
        if event.kind == STORED:
            index.store(batch.replica_id, event.block_hashes)
        elif event.kind == REMOVED:
            index.remove(batch.replica_id, event.block_hashes)
        elif event.kind == CLEARED:
            index.clear(batch.replica_id)


class KvEventPublisher:
    """Buffers a replica's engine events (the engine's sink may call from any thread) and
    publishes them in batches."""

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        replica_id: str,
        *,
        block_size: int,
        maxlen: int = 1_000_000,
        flush_interval_s: float = 0.01,
        snapshot_interval_s: float = 30.0,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._replica_id = replica_id
        self._block_size = block_size
        self._maxlen = maxlen
        self._flush_interval_s = flush_interval_s
        self._snapshot_interval_s = snapshot_interval_s
        self._pending: collections.deque[tuple[int, list[int]]] = collections.deque()
        self._published: dict[int, None] = {}  # block hashes stored as far as routers know
        self._last_entry_id: bytes | None = None
        self._snapshot_stale = False
        self._stopped = False

    def sink(self, events: Iterable[Any]) -> None:
        """The engine's `kv_event_sink`: events with `.kind` and `.block_hashes`."""
        for event in events:
            self._pending.append(
                (event_kind(str(event.kind)), [int(h) for h in event.block_hashes])
            )

    def publish_cleared(self) -> None:
        self._pending.append((CLEARED, []))

    async def flush(self) -> int:
        """Publish what is buffered as one entry; returns the number of events sent."""
        batch = replica_link_pb2.KvEventBatch(
            replica_id=self._replica_id, block_size=self._block_size
        )
        while self._pending:
            kind, hashes = self._pending.popleft()
            batch.events.add(kind=kind, block_hashes=hashes)
        if not batch.events:
            return 0
        payload: dict[Any, Any] = {BATCH_FIELD: batch.SerializeToString()}
        while True:
            try:
                entry_id = await self._redis.xadd(
                    self._keys.kv_events, payload, maxlen=self._maxlen, approximate=True
                )
                break
            except TRANSIENT_ERRORS as err:
                log.warning("kv events not published yet, retrying", error=str(err))
                await asyncio.sleep(0.2)
        self._last_entry_id = entry_id.encode() if isinstance(entry_id, str) else entry_id
        self._snapshot_stale = True
        for event in batch.events:
            if event.kind == STORED:
                self._published.update(dict.fromkeys(event.block_hashes))
            elif event.kind == REMOVED:
                for block_hash in event.block_hashes:
                    self._published.pop(block_hash, None)
            elif event.kind == CLEARED:
                self._published.clear()
        return len(batch.events)

    async def write_snapshot(self) -> bool:
        """Store what routers know of this replica's cache as of its last entry; returns
        whether it was rewritten (unchanged since the last one: only kept alive)."""
        if self._last_entry_id is None:
            return False
        key = self._keys.kv_snapshot(self._replica_id)
        ttl_s = max(60, int(3 * self._snapshot_interval_s) + 1)
        if not self._snapshot_stale:
            await self._redis.expire(key, ttl_s)
            return False
        batch = replica_link_pb2.KvEventBatch(
            replica_id=self._replica_id, block_size=self._block_size
        )
        batch.events.add(kind=CLEARED)
        batch.events.add(kind=STORED, block_hashes=list(self._published))
        mapping: dict[Any, Any] = {
            STREAM_ID_FIELD: self._last_entry_id,
            BATCH_FIELD: batch.SerializeToString(),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, ttl_s)
            await pipe.execute()
        self._snapshot_stale = False
        return True

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        next_snapshot = time.monotonic() + self._snapshot_interval_s
        while not self._stopped:
            await self.flush()
            if time.monotonic() >= next_snapshot:
                next_snapshot = time.monotonic() + self._snapshot_interval_s
                try:
                    await self.write_snapshot()
                except TRANSIENT_ERRORS as err:  # the next round writes it
                    log.warning("kv snapshot not written", error=str(err))
            await asyncio.sleep(self._flush_interval_s)


class KvEventFollower:
    """A router's reader of the kv-events stream, folding each batch into its index."""

    def __init__(self, redis: Redis, keys: RedisKeys, index: BlockIndex) -> None:
        self._redis = redis
        self._keys = keys
        self.index = index
        self.last_id = b"0-0"
        self.batches_applied = 0
        self.snapshot_ids: dict[str, tuple[int, int]] | None = None  # None: not loaded yet
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    async def load_snapshots(self) -> int:
        """Fold every replica's snapshot into the index (before reading the stream)."""
        snapshot_ids: dict[str, tuple[int, int]] = {}
        async for key in self._redis.scan_iter(match=self._keys.kv_snapshots_pattern):
            fields: Any = await self._redis.hgetall(key)
            raw, entry_id = fields.get(BATCH_FIELD), fields.get(STREAM_ID_FIELD)
            if raw is None or entry_id is None:
                continue
            batch = replica_link_pb2.KvEventBatch()
            batch.ParseFromString(raw)
            apply_batch(self.index, batch)
            snapshot_ids[batch.replica_id] = stream_id(entry_id)
        self.snapshot_ids = snapshot_ids
        return len(snapshot_ids)

    async def poll(self, block_ms: int | None = None, count: int = 512) -> int:
        """Apply the next batches (waiting up to block_ms for one); returns how many."""
        if self.snapshot_ids is None:
            await self.load_snapshots()
        assert self.snapshot_ids is not None
        reply: Any = await self._redis.xread(
            {self._keys.kv_events: self.last_id}, count=count, block=block_ms
        )
        applied = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                raw = fields.get(BATCH_FIELD)
                if raw is None:
                    continue
                batch = replica_link_pb2.KvEventBatch()
                batch.ParseFromString(raw)
                snapshot = self.snapshot_ids.get(batch.replica_id)
                if snapshot is not None and stream_id(entry_id) <= snapshot:
                    continue  # already in the replica's snapshot
                apply_batch(self.index, batch)
                applied += 1
        self.batches_applied += applied
        return applied

    async def run(self, block_ms: int = 1000) -> None:
        while not self._stopped:
            try:
                await self.poll(block_ms)
            except _FOLLOW_ERRORS as err:
                log.warning("kv events unreadable, retrying", error=str(err))
                await asyncio.sleep(0.5)
