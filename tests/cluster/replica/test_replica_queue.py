import asyncio
import uuid

import pytest

from oss_serve.cluster.replica.queue import ReplicaQueue
from oss_serve.protos import replica_link_pb2
from oss_serve.router.enqueue import ReplicaGone, RequestQueue
from oss_serve.streams.keys import OVERFLOW, RedisKeys
from oss_serve.streams.redis_client import connect
from oss_serve.streams.registry import ReplicaLoad, read_registry
from tests.router.servers import redis_server

pytestmark = pytest.mark.integration
__all__ = ["redis_server"]


@pytest.fixture
async def redis(redis_server):
    client = connect(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def keys():
    return RedisKeys(namespace=f"t-{uuid.uuid4().hex[:8]}")


def record(request_id: str, lane: str = "interactive") -> replica_link_pb2.QueueRecord:
    return replica_link_pb2.QueueRecord(
        request_id=request_id, lane=lane, prompt_token_ids=[1, 2, 3]
    )


async def replica(redis, keys, replica_id: str, **kwargs) -> ReplicaQueue:
    queue = ReplicaQueue(redis, keys, replica_id, **kwargs)
    await queue.register(ReplicaLoad(replica_id=replica_id, model="m"))
    return queue


async def test_heartbeat_registers_with_a_ttl_and_expires(redis, keys):
    await replica(redis, keys, "r1", heartbeat_ttl_s=0.3)
    registry = await read_registry(redis, keys)
    assert registry["r1"].model == "m"
    assert 0 < await redis.pttl(keys.replica("r1")) <= 300
    await asyncio.sleep(0.4)
    assert await read_registry(redis, keys) == {}


async def test_pull_reads_lanes_in_priority_order_own_before_overflow(redis, keys):
    queue = await replica(redis, keys, "r1")
    enqueue = RequestQueue(redis, keys)
    await enqueue.enqueue(OVERFLOW, record("overflow-batch", "batch"))
    await enqueue.enqueue("r1", record("own-batch", "batch"))
    await enqueue.enqueue(OVERFLOW, record("overflow-interactive"))
    await enqueue.enqueue("r1", record("own-interactive"))
    order = []
    while got := await queue.pull():
        order.extend(d.record.request_id for d in got)
    assert order == ["own-interactive", "overflow-interactive", "own-batch", "overflow-batch"]


async def test_overflow_entries_are_not_starved_by_a_busy_own_stream(redis, keys):
    queue = await replica(redis, keys, "r1")
    enqueue = RequestQueue(redis, keys)
    for i in range(6):
        await enqueue.enqueue("r1", record(f"own-{i}"))
    await enqueue.enqueue(OVERFLOW, record("overflow"))
    order = [d.record.request_id for _ in range(4) for d in await queue.pull()]
    assert order == ["own-0", "overflow", "own-1", "own-2"]


async def test_blocking_pull_wakes_when_a_request_arrives(redis, keys):
    queue = await replica(redis, keys, "r1")
    waiter = asyncio.create_task(queue.pull(block_ms=2000))
    await asyncio.sleep(0.1)
    await RequestQueue(redis, keys).enqueue("r1", record("late"))
    got = await asyncio.wait_for(waiter, 2)
    assert [d.record.request_id for d in got] == ["late"]
    assert got[0].delivery_count == 1


async def test_enqueue_refuses_a_replica_without_heartbeat_and_sets_the_session(redis, keys):
    enqueue = RequestQueue(redis, keys)
    with pytest.raises(ReplicaGone):
        await enqueue.enqueue("ghost", record("x"))
    assert await redis.xlen(keys.request_stream("ghost", "interactive")) == 0
    await replica(redis, keys, "r1")
    await enqueue.enqueue("r1", record("x"), session_key="alice", session_ttl_s=5)
    assert await enqueue.session_replica("alice") == "r1"


async def test_ack_deletes_the_entry_and_dead_letters_keep_the_reason(redis, keys):
    queue = await replica(redis, keys, "r1")
    enqueue = RequestQueue(redis, keys)
    stream, _ = await enqueue.enqueue("r1", record("ok"))
    await enqueue.enqueue("r1", record("bad"))
    ok, bad = (await queue.pull())[0], (await queue.pull())[0]
    assert await queue.ack(ok)
    assert await queue.ack(bad, dead_letter_reason="engine rejected the prompt")
    assert await redis.xlen(stream) == 0
    assert (await redis.xpending(stream, "replicas"))["pending"] == 0
    ((_, fields),) = await redis.xrange(keys.dead_letters)
    assert fields[b"request_id"] == b"bad" and fields[b"reason"] == b"engine rejected the prompt"
    assert not await queue.ack(ok)  # twice: no longer pending


async def test_queued_counts_only_entries_not_yet_pulled(redis, keys):
    queue = await replica(redis, keys, "r1")
    enqueue = RequestQueue(redis, keys)
    for i in range(3):
        await enqueue.enqueue("r1", record(f"q{i}"))
    await queue.pull()
    assert await queue.queued() == 2
    assert await enqueue.overflow_backlog() == 0


async def test_withdrawn_entry_is_never_delivered(redis, keys):
    queue = await replica(redis, keys, "r1")
    enqueue = RequestQueue(redis, keys)
    stream, entry_id = await enqueue.enqueue("r1", record("cancelled"))
    assert await enqueue.withdraw(stream, entry_id)
    assert await queue.pull() == []


async def test_a_dead_replicas_entries_are_claimed_and_it_can_no_longer_ack(redis, keys):
    dying = await replica(redis, keys, "dying", heartbeat_ttl_s=0.2, dead_after_s=0.3)
    survivor = await replica(redis, keys, "survivor", heartbeat_ttl_s=5, dead_after_s=0.3)
    enqueue = RequestQueue(redis, keys)
    await enqueue.enqueue("dying", record("running"))
    await enqueue.enqueue("dying", record("queued"))
    (held,) = await dying.pull()
    assert await survivor.refresh_dead_replicas() == []
    await asyncio.sleep(0.3)  # heartbeat key expired
    await survivor.refresh_dead_replicas()
    assert await survivor.claim_from_dead() == []  # not missing long enough yet
    await asyncio.sleep(0.35)
    assert await survivor.refresh_dead_replicas() == ["dying"]
    (claimed,) = await survivor.claim_from_dead()
    assert (claimed.record.request_id, claimed.delivery_count) == ("running", 2)
    (undelivered,) = await survivor.pull()  # a dead replica's stream is read like overflow
    assert undelivered.record.request_id == "queued"
    assert not await dying.ack(held)  # superseded: the entry belongs to the survivor now
    assert await survivor.ack(claimed) and await survivor.ack(undelivered)
    assert await survivor.remove_if_drained("dying")
    assert await redis.sismember(keys.replicas, "dying") == 0


async def test_an_entry_left_pending_without_a_holder_is_swept_back(redis, keys):
    """A failover that loses an acknowledgement leaves the entry pending to a live replica
    that no longer runs it: the replica takes it back after dead_after_s."""
    queue = await replica(redis, keys, "r1", dead_after_s=0.3)
    await RequestQueue(redis, keys).enqueue("r1", record("orphan"))
    (held,) = await queue.pull()
    assert await queue.claim_from_dead() == []  # not idle long enough
    await asyncio.sleep(0.35)
    (swept,) = await queue.claim_from_dead()
    assert (swept.entry_id, swept.delivery_count) == (held.entry_id, 2)
    assert await queue.claim_from_dead() == []  # one sweep per dead_after_s
    assert await queue.ack(swept)


async def test_touched_entries_of_a_live_replica_are_not_claimed(redis, keys):
    slow = await replica(redis, keys, "slow", dead_after_s=0.2)
    other = await replica(redis, keys, "other", dead_after_s=0.2)
    enqueue = RequestQueue(redis, keys)
    await enqueue.enqueue(OVERFLOW, record("long"))
    (held,) = await slow.pull()
    other.dead_replicas = ["ghost"]  # pretend some replica is dead: overflow gets scanned
    for _ in range(4):
        await asyncio.sleep(0.1)
        assert await slow.touch([held]) == 1
        assert await other.claim_from_dead() == []
    await asyncio.sleep(0.25)  # untouched for longer than dead_after_s: claimable
    assert [d.record.request_id for d in await other.claim_from_dead()] == ["long"]
    assert await slow.touch([held]) == 0  # touching never takes an entry back


async def test_own_pending_entries_come_back_after_a_restart(redis, keys):
    first = await replica(redis, keys, "r1")
    enqueue = RequestQueue(redis, keys)
    await enqueue.enqueue("r1", record("a"))
    await enqueue.enqueue("r1", record("b"))
    await first.pull()
    await first.pull()
    restarted = await replica(redis, keys, "r1")
    held = await restarted.own_pending()
    assert sorted(d.record.request_id for d in held) == ["a", "b"]
    assert all(d.delivery_count >= 2 for d in held)
