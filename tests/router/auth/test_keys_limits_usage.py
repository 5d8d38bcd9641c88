"""API keys, rate limits and usage against a real redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from typer.testing import CliRunner

from oss_serve.cli import app
from oss_serve.router.auth.keys import ApiKey, ApiKeyStore, Authenticator, digest
from oss_serve.router.auth.limits import RateLimiter
from oss_serve.router.auth.usage import Usage, UsageRecorder
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.redis_client import connect

pytestmark = [pytest.mark.integration]


@pytest.fixture
async def redis(redis_server):
    client = connect(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def keys() -> RedisKeys:
    return RedisKeys(f"auth-{uuid.uuid4().hex[:6]}")


async def test_keys_are_stored_hashed_and_revocable(redis, keys):
    store = ApiKeyStore(redis, keys)
    api_key, record = await store.add("ci", requests_per_min=5, tokens_per_min=100)
    assert api_key.startswith("sk-oss-") and len(api_key) > 40
    raw = await redis.hgetall(keys.api_keys)
    assert list(raw) == [digest(api_key).encode()]  # the field is the digest ...
    assert api_key.encode() not in b"".join([*raw, *raw.values()])  # ... the key is nowhere
    assert await store.lookup(api_key) == record
    assert await store.lookup(api_key + "x") is None
    assert [k.key_id for k in await store.all()] == [record.key_id]
    assert await store.revoke(record.key_id) == [record]
    assert await store.lookup(api_key) is None


async def test_authenticator_local_key_in_constant_time_and_stored_keys(redis, keys):
    store = ApiKeyStore(redis, keys)
    stored, _ = await store.add("svc")
    auth = Authenticator(store, local_key="sk-local", local_requests_per_min=7)
    local = await auth.authenticate("sk-local")
    assert local is not None and local.key_id == "local" and local.requests_per_min == 7
    assert (await auth.authenticate(stored)) is not None
    assert await auth.authenticate("sk-wrong") is None
    assert await auth.authenticate(None) is None
    open_auth = Authenticator(store)
    assert (await open_auth.authenticate(None)) == open_auth.anonymous


async def test_request_limit_is_atomic_across_two_router_connections(redis_server, keys):
    """Two clients (two routers) racing 60 admissions for a 20/min key: exactly 20 pass."""
    clients = [connect(redis_server.url), connect(redis_server.url)]
    limiters = [RateLimiter(c, keys) for c in clients]
    key = ApiKey(key_id=uuid.uuid4().hex[:16], name="k", requests_per_min=20)
    decisions = await asyncio.gather(*(limiters[i % 2].admit(key, 1) for i in range(60)))
    assert sum(d.allowed for d in decisions) == 20
    refused = [d for d in decisions if not d.allowed]
    assert all(d.limit == "requests" and 1 <= d.retry_after_s <= 60 for d in refused)
    for client in clients:
        await client.aclose()


async def test_token_limit_counts_prompt_then_completion_tokens(redis, keys):
    limiter = RateLimiter(redis, keys)
    key = ApiKey(key_id=uuid.uuid4().hex[:16], name="k", tokens_per_min=100)
    assert (await limiter.admit(key, 60)).allowed
    await limiter.charge_tokens(key, 30)  # the completion of that request
    refused = await limiter.admit(key, 20)
    assert not refused.allowed and refused.limit == "tokens"
    assert (await limiter.admit(key, 10)).allowed
    too_big = await limiter.admit(ApiKey(key_id="big", name="b", tokens_per_min=10), 11)
    assert not too_big.allowed and too_big.never_fits


async def test_sliding_window_admits_again_after_the_retry_delay(redis, keys):
    limiter = RateLimiter(redis, keys, window_s=1)
    key = ApiKey(key_id=uuid.uuid4().hex[:16], name="k", requests_per_min=3)
    assert all([(await limiter.admit(key, 0)).allowed for _ in range(3)])
    refused = await limiter.admit(key, 0)
    assert not refused.allowed
    time.sleep(2.05)  # two windows later nothing of the burst counts
    assert (await limiter.admit(key, 0)).allowed


async def test_usage_adds_up_per_key(redis, keys):
    usage = UsageRecorder(redis, keys)
    await usage.record("k1", Usage(1, 10, 5, 2, 1))
    await usage.record("k1", Usage(1, 20, 7, 0, 3))
    assert await usage.read("k1") == Usage(2, 30, 12, 2, 4)
    assert await usage.read("other") == Usage()


def test_keys_cli_adds_lists_and_revokes(redis_server, keys):
    runner = CliRunner()
    common = ["--redis-url", redis_server.url, "--namespace", keys.namespace]
    added = runner.invoke(app, ["keys", "add", "team-a", "--requests-per-min", "9", *common])
    assert added.exit_code == 0, added.output
    api_key = added.stdout.strip().splitlines()[0]
    assert api_key.startswith("sk-oss-")
    listed = runner.invoke(app, ["keys", "list", *common])
    assert listed.exit_code == 0 and "team-a" in listed.stdout and api_key not in listed.stdout
    key_id = digest(api_key)[:16]
    assert key_id in listed.stdout
    revoked = runner.invoke(app, ["keys", "revoke", key_id, *common])
    assert revoked.exit_code == 0 and key_id in revoked.stdout
    again = runner.invoke(app, ["keys", "revoke", key_id, *common])
    assert again.exit_code == 1
