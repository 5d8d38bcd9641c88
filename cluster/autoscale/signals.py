"""Read the autoscaler's load signals from Redis: queue backlogs, wait ages, replica loads.

The layout is the router's (streams/keys.py): one request stream per replica and lane,
shared overflow lanes, and a registry hash per replica whose TTL is its heartbeat. Replicas
XACK + XDEL an entry when its request finishes, so a stream holds the entries in flight
(pending in the consumer group) and those not yet delivered; its IDs are Redis's millisecond
timestamps, so the oldest undelivered entry tells how long the queue has made a request wait.
Streams whose replica is gone (its hash expired) count as shared backlog: another replica
will claim them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from oss_serve.cluster.autoscale.policy import LoadReport, QueueBacklog, Signals
from oss_serve.common.logging import get_logger
from oss_serve.streams.keys import OVERFLOW, RedisKeys
from oss_serve.streams.registry import ReplicaLoad as RegistryEntry

log = get_logger(__name__)


@dataclass(frozen=True)
class StreamBacklog:
    """What one request stream holds."""

    key: str
    replica_id: str  # OVERFLOW for the shared lanes
    lane: str
    length: int
    pending: int  # delivered to a replica, not finished
    undelivered: int
    oldest_undelivered_ms: int | None  # stream ID time of the oldest undelivered entry


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id_ms(stream_id: Any) -> int:
    return int(_text(stream_id).split("-", 1)[0])


def _parse_stream_key(keys: RedisKeys, key: str) -> tuple[str, str] | None:
    """(replica id, lane) of a request stream key `{ns}:req:{replica_id}:{lane}`."""
    prefix = f"{keys.namespace}:req:"
    if not key.startswith(prefix) or ":" not in key[len(prefix) :]:
        return None
    replica_id, lane = key[len(prefix) :].rsplit(":", 1)
    return replica_id, lane


def request_streams(client: redis.Redis, keys: RedisKeys) -> list[tuple[str, str, str]]:
    """(key, replica id, lane) of every request stream in the namespace."""
    found = []
    pattern = keys.request_stream("*", "*")
    for raw in client.scan_iter(match=pattern, count=500, _type="STREAM"):
        key = _text(raw)
        parsed = _parse_stream_key(keys, key)
        if parsed is not None:
            found.append((key, *parsed))
    return sorted(found)


def read_stream(client: redis.Redis, key: str, replica_id: str, lane: str) -> StreamBacklog:
    """Length, pending and undelivered entries of one stream (one consumer group per stream,
    as the router creates them; with several, the least advanced group counts)."""
    pipe = client.pipeline(transaction=False)
    pipe.xlen(key)
    pipe.xinfo_groups(key)
    length, groups = pipe.execute()
    pending = sum(int(g["pending"]) for g in groups)
    undelivered = max(0, int(length) - pending)
    oldest_ms = None
    if undelivered:
        start = "-"
        if groups:
            last = min((_text(g["last-delivered-id"]) for g in groups), key=_id_order)
            start = f"({last}"
        first = client.xrange(key, min=start, max="+", count=1)
        if first:
            oldest_ms = _stream_id_ms(first[0][0])
    return StreamBacklog(key, replica_id, lane, int(length), pending, undelivered, oldest_ms)


def _id_order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def read_replicas(client: redis.Redis, keys: RedisKeys) -> list[LoadReport]:
    """Load reports of the registered replicas whose hash is still alive (parsed as the
    router parses them)."""
    ids = sorted(_text(m) for m in client.smembers(keys.replicas))
    pipe = client.pipeline(transaction=False)
    for replica_id in ids:
        pipe.hgetall(keys.replica(replica_id))
    loads = []
    for replica_id, raw in zip(ids, pipe.execute(), strict=True):
        if not raw:
            continue  # expired: the replica stopped heart-beating
        try:
            entry = RegistryEntry.from_fields(raw)
        except ValueError as err:
            log.warning("skipping malformed load report", replica_id=replica_id, error=str(err))
            continue
        loads.append(
            LoadReport(
                replica_id=entry.replica_id,
                pool=entry.pool,
                running=entry.running,
                waiting=entry.waiting,
                max_running=entry.max_running,
                kv_usage=entry.kv_usage,
                heartbeat_ts=entry.heartbeat_ts,
            )
        )
    return loads


def redis_now_s(client: redis.Redis) -> float:
    """Redis's clock: stream IDs are stamped by it, so wait ages are measured against it."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def aggregate(
    now_s: float, streams: Iterable[StreamBacklog], replicas: Iterable[LoadReport]
) -> Signals:
    """Backlog per pool (streams of live replicas) and shared (overflow + orphaned)."""
    replicas = tuple(replicas)
    pool_of = {r.replica_id: r.pool for r in replicas}
    by_pool: dict[str, QueueBacklog] = defaultdict(QueueBacklog)
    shared = QueueBacklog()
    for stream in streams:
        wait_s = 0.0
        if stream.oldest_undelivered_ms is not None:
            wait_s = max(0.0, now_s - stream.oldest_undelivered_ms / 1000.0)
        backlog = QueueBacklog(stream.undelivered, wait_s)
        pool = pool_of.get(stream.replica_id) if stream.replica_id != OVERFLOW else None
        if pool is None:
            shared = shared + backlog
        else:
            by_pool[pool] = by_pool[pool] + backlog
    return Signals(now_s, dict(by_pool), shared, replicas)


def read_signals(client: redis.Redis, keys: RedisKeys) -> Signals:
    """Everything one autoscaling round needs, read from Redis."""
    now_s = redis_now_s(client)
    streams = [read_stream(client, *found) for found in request_streams(client, keys)]
    return aggregate(now_s, streams, read_replicas(client, keys))
