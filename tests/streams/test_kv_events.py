import asyncio
import uuid
from dataclasses import dataclass

import pytest

from oss_serve.common.kv_hash import block_hashes
from oss_serve.router.prefix_index import PrefixIndex, PromptBlocks
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.kv_events import KvEventFollower, KvEventPublisher
from oss_serve.streams.redis_client import connect
from tests.router.servers import redis_server

pytestmark = pytest.mark.integration
__all__ = ["redis_server"]


@dataclass
class EngineEvent:  # the shape of the engine's KVCacheEvent
    kind: str
    block_hashes: list[int]


async def test_events_from_two_replicas_fold_into_every_routers_index(redis_server):
    redis = connect(redis_server.url)
    keys = RedisKeys(namespace=f"t-{uuid.uuid4().hex[:8]}")
    prompt = list(range(64))
    hashes = block_hashes(prompt, 16)
    a = KvEventPublisher(redis, keys, "a", block_size=16)
    b = KvEventPublisher(redis, keys, "b", block_size=16)
    a.sink([EngineEvent("stored", hashes)])
    b.sink([EngineEvent("stored", hashes[:2])])
    assert await a.flush() == 1 and await b.flush() == 1
    routers = [KvEventFollower(redis, keys, PrefixIndex()) for _ in range(2)]
    for router in routers:
        assert await router.poll() == 2
        assert router.index.match(PromptBlocks(prompt, 16)) == {"a": 4, "b": 2}
    a.sink([EngineEvent("removed", hashes[2:])])
    b.publish_cleared()
    await a.flush()
    await b.flush()
    for router in routers:
        await router.poll(block_ms=100)
        assert router.index.match(PromptBlocks(prompt, 16)) == {"a": 2}
    late = KvEventFollower(redis, keys, PrefixIndex())  # a router that starts later replays all
    await late.poll()
    assert late.index.match(PromptBlocks(prompt, 16)) == {"a": 2}
    await redis.aclose()


def test_unknown_event_kind_is_a_clear_error():
    publisher = KvEventPublisher(None, RedisKeys(), "a", block_size=16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown KV event kind 'moved'"):
        publisher.sink([EngineEvent("moved", [1])])


async def test_a_router_starting_after_the_stream_was_trimmed_learns_from_the_snapshots(
    redis_server,
):
    """A hot prefix is stored once, then only hit: its event may be trimmed long before it is
    evicted. The snapshot keeps it; entries after the snapshot still apply, once."""
    redis = connect(redis_server.url)
    keys = RedisKeys(namespace=f"t-{uuid.uuid4().hex[:8]}")
    hot, other = list(range(64)), list(range(1000, 1064))
    hot_hashes, other_hashes = block_hashes(hot, 16), block_hashes(other, 16)
    a = KvEventPublisher(redis, keys, "a", block_size=16)
    b = KvEventPublisher(redis, keys, "b", block_size=16)
    for publisher in (a, b):
        publisher.publish_cleared()
    a.sink([EngineEvent("stored", hot_hashes)])
    b.sink([EngineEvent("stored", other_hashes[:3])])
    await a.flush()
    await b.flush()
    assert await a.write_snapshot() and await b.write_snapshot()
    assert not await a.write_snapshot()  # unchanged: only kept alive
    a.sink([EngineEvent("removed", hot_hashes[3:])])  # after the snapshot: from the stream
    b.publish_cleared()  # b restarted
    b.sink([EngineEvent("stored", hot_hashes[:1])])
    await a.flush()
    await b.flush()
    early = KvEventFollower(redis, keys, PrefixIndex())
    early.snapshot_ids = {}  # a router that has followed the stream from the start
    await early.poll()
    expected = {"a": 3, "b": 1}
    assert early.index.match(PromptBlocks(hot, 16)) == expected
    assert early.index.match(PromptBlocks(other, 16)) == {}

    # trim everything written before the snapshots (a's store of the hot prefix included)
    entries = await redis.xrange(keys.kv_events)
    assert len(entries) == 4  # one entry per flush
    await redis.xdel(keys.kv_events, *[entry_id for entry_id, _ in entries[:2]])
    without = KvEventFollower(redis, keys, PrefixIndex())
    without.snapshot_ids = {}  # what a router saw before snapshots existed
    await without.poll()
    assert without.index.match(PromptBlocks(hot, 16)) == {"b": 1}  # the hot prefix is lost

    late = KvEventFollower(redis, keys, PrefixIndex())
    await late.poll()
    assert late.snapshot_ids is not None and set(late.snapshot_ids) == {"a", "b"}
    assert late.batches_applied == 2  # only the entries newer than each snapshot
    assert late.index.match(PromptBlocks(hot, 16)) == expected
    assert late.index.match(PromptBlocks(other, 16)) == {}
    await redis.aclose()


async def test_the_publisher_loop_rewrites_the_snapshot_while_it_publishes(redis_server):
    redis = connect(redis_server.url)
    keys = RedisKeys(namespace=f"t-{uuid.uuid4().hex[:8]}")
    prompt = list(range(48))
    hashes = block_hashes(prompt, 16)
    publisher = KvEventPublisher(redis, keys, "a", block_size=16, snapshot_interval_s=0.05)
    task = asyncio.create_task(publisher.run())
    try:
        publisher.sink([EngineEvent("stored", hashes)])
        for _ in range(100):
            await asyncio.sleep(0.05)
            if await redis.exists(keys.kv_snapshot("a")):
                break
        assert 0 < await redis.ttl(keys.kv_snapshot("a")) <= 60
        router = KvEventFollower(redis, keys, PrefixIndex())
        await router.load_snapshots()
        assert router.index.match(PromptBlocks(prompt, 16)) == {"a": 3}
    finally:
        publisher.stop()
        await task
        await redis.aclose()
