"""One `connect()` for every Redis URL: plain servers and Redis Sentinel (a real primary, a
replica and three sentinels), asyncio and blocking clients, through a failover."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from oss_serve.cluster.autoscale.signals import read_signals
from oss_serve.cluster.replica.probe import check
from oss_serve.common.settings import Settings
from oss_serve.protos import replica_link_pb2
from oss_serve.router.enqueue import RequestQueue
from oss_serve.streams.keys import OVERFLOW, RedisKeys
from oss_serve.streams.redis_client import (
    RedisUrlError,
    SentinelUrl,
    connect,
    is_sentinel_url,
    retry_transient,
)
from oss_serve.streams.registry import ReplicaLoad
from tests.streams.sentinel import SentinelRedis


@pytest.mark.unit
def test_a_sentinel_url_names_its_sentinels_service_database_and_passwords():
    url = SentinelUrl.parse(
        "rediss+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/queue-main/3?sentinel_password=sp"
    )
    assert url.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (url.service_name, url.db, url.ssl) == ("queue-main", 3, True)
    assert (url.username, url.password, url.sentinel_password) == ("app", "p@ss", "sp")
    assert url.client_options() == {"db": 3, "username": "app", "password": "p@ss", "ssl": True}
    assert url.sentinel_options({})["password"] == "sp"
    assert is_sentinel_url("redis+sentinel://h/s") and not is_sentinel_url("redis://h:6379/0")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("redis+sentinel://s1:26379", "service"),
        ("redis+sentinel://s1:26379/svc/zero", "number"),
        ("redis+sentinel://s1:port/svc", "port"),
    ],
)
def test_a_bad_sentinel_url_says_which_part_is_wrong(url, names):
    with pytest.raises(RedisUrlError, match=names):
        SentinelUrl.parse(url)


@pytest.fixture(scope="module")
def sentinel_redis(tmp_path_factory):
    deployment = SentinelRedis(tmp_path_factory.mktemp("sentinel")).start()
    try:
        yield deployment
    finally:
        deployment.stop()


def _record(index: int) -> replica_link_pb2.QueueRecord:
    return replica_link_pb2.QueueRecord(
        request_id=f"r-{index}", prompt_token_ids=[1, 2, 3], lane="interactive"
    )


@pytest.mark.integration
@pytest.mark.slow
async def test_a_sentinel_client_follows_a_failover_and_keeps_every_queued_record(
    sentinel_redis,
):
    """Records queued with a replica's acknowledgement (WAIT) survive the primary's crash;
    the same clients (asyncio, blocking) reach the promoted replica within 30 s; the
    autoscaler's reads and the replica probe work through the Sentinel URL."""
    keys = RedisKeys(f"sentinel-{uuid.uuid4().hex[:6]}")
    client = connect(sentinel_redis.url)
    blocking = connect(sentinel_redis.url, blocking=True, socket_timeout_s=3)
    queue = RequestQueue(client, keys, replica_acks=1, retry_timeout_s=30)
    queued = [await queue.enqueue(OVERFLOW, _record(i)) for i in range(50)]
    old_port = sentinel_redis.primary_port()
    assert client.connection_pool.connection_kwargs.get("port") is None  # found via sentinels
    sentinel_redis.kill_primary()
    more = asyncio.create_task(queue.enqueue(OVERFLOW, _record(50)))  # waits out the failover
    failover_s = sentinel_redis.wait_failover(old_port)
    queued.append(await asyncio.wait_for(more, 30))
    assert failover_s < 30
    stream = keys.overflow_stream("interactive")

    async def length() -> int:
        return int(await client.xlen(stream))

    assert await retry_transient(length, what="reading", timeout_s=30) == 51
    entries = await client.xrange(stream)
    assert [e[0].decode() for e in entries] == [entry_id for _, entry_id in queued]
    blocking.hset(keys.replica("r1"), mapping=ReplicaLoad("r1", heartbeat_ts=0.0).to_fields())
    blocking.sadd(keys.replicas, "r1")
    signals = read_signals(blocking, keys)
    assert signals.shared_backlog.undelivered == 51
    assert [r.replica_id for r in signals.replicas] == ["r1"]
    settings = Settings(
        redis_url=sentinel_redis.url, redis_namespace=keys.namespace, replica_id="r1"
    )
    healthy, message = check(settings, max_age_s=1e12)
    assert healthy, message
    blocking.close()
    await client.aclose()


@pytest.mark.integration
async def test_a_plain_url_still_gives_a_plain_client(tmp_path):
    from tests.router.servers import RedisServer

    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        client = connect(server.url)
        assert await client.ping()
        blocking = connect(server.url, blocking=True)
        assert blocking.ping() and blocking.connection_pool.connection_kwargs["port"] == server.port
        blocking.close()
        await client.aclose()
    finally:
        server.stop()
