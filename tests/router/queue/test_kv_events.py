import uuid
from dataclasses import dataclass

import pytest

from oss_serve.common.kv_hash import block_hashes
from oss_serve.common.redis_keys import RedisKeys
from oss_serve.router.prefix_index import PrefixIndex, PromptBlocks
from oss_serve.router.queue.kv_events import KvEventFollower, KvEventPublisher
from oss_serve.router.queue.redis_client import connect
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
