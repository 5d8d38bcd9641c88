"""The Redis protocol of background responses against a real redis-server: one writer (the
lease owner), cancel requests, a lapsed lease settled by a reader, and many event streams
followed through one Redis connection."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from oss_serve.router.http.background_api import settle_abandoned, tail
from oss_serve.router.http.background_runs import BackgroundRuns, StoredEvent, record_json
from oss_serve.router.http.event_tails import EventTails
from oss_serve.router.http.response_events import decode_frame
from oss_serve.router.http.response_store import ResponseStore
from oss_serve.streams.keys import RedisKeys
from tests.router.servers import redis_server

__all__ = ["redis_server"]
pytestmark = pytest.mark.integration
TTL_S = 60


def _response(response_id: str, status: str = "queued") -> dict[str, object]:
    return {"id": response_id, "object": "response", "status": status, "output": []}


def _event(kind: str, number: int) -> StoredEvent:
    return StoredEvent.of({"type": kind, "sequence_number": number, "delta": str(number)})


async def _begin(runs: BackgroundRuns, response_id: str, tool_session: str | None = None) -> None:
    queued = json.dumps(_response(response_id))
    await runs.begin(
        response_id,
        record_json(queued, "[]", tool_session),
        key_id="key-1",
        owner="router-a",
        stream=True,
        events=[_event("response.created", 0), _event("response.queued", 1)],
    )


@pytest.fixture
async def redis(redis_server):
    client = Redis.from_url(redis_server.url, max_connections=3)
    yield client
    await client.flushall()
    await client.aclose()


async def test_only_the_owner_writes_and_a_cancel_reaches_it(redis):
    runs = BackgroundRuns(redis, RedisKeys("t1"), TTL_S)
    await _begin(runs, "resp_1")
    events = [_event("response.output_text.delta", 2)]
    assert await runs.write("resp_1", "router-b", events=events) == "lost"
    assert await runs.write("resp_1", "router-a", events=events, status="in_progress") == "ok"
    assert await runs.request_cancel("resp_1")
    assert await runs.renew("router-a", ["resp_1"]) == {"resp_1": "cancel"}
    final = record_json(json.dumps(_response("resp_1", "cancelled")), "[]")
    await runs.write("resp_1", "router-a", status="cancelled", final_record=final)
    state = await runs.state("resp_1")
    assert state is not None and state.status == "cancelled" and state.owner == ""
    assert not await runs.request_cancel("resp_1")  # it has ended
    stored = await ResponseStore(redis, RedisKeys("t1"), TTL_S).load("resp_1")
    assert stored is not None and stored["response"]["status"] == "cancelled"


async def test_a_lapsed_lease_is_settled_failed_and_the_old_owner_is_refused(redis):
    keys = RedisKeys("t2")
    runs, store = BackgroundRuns(redis, keys, TTL_S), ResponseStore(redis, keys, TTL_S)
    runs.lease_s = 0.2
    await _begin(runs, "resp_2", tool_session="python-session-1")
    state = await runs.state("resp_2")
    assert state is not None and not await runs.lapsed(state)
    await asyncio.sleep(0.3)
    assert await runs.lapsed(state)
    await settle_abandoned(runs, store, "resp_2", state)
    record = await store.load("resp_2")
    assert record is not None and record["response"]["status"] == "failed"
    assert "lease" in record["response"]["error"]["message"]
    assert record["tool_session"] == "python-session-1"  # a follow-up continues the chain
    assert await runs.write("resp_2", "router-a", status="in_progress") == "lost"
    await store.save(_response("resp_2", "completed"), [])  # a plain save leaves it alone
    frames = [f async for f in tail(runs, EventTails(runs), store, "resp_2", after=-1)]
    kinds = [decode_frame(frame)["type"] for frame in frames]
    assert kinds == ["response.created", "response.queued", "response.failed"]
    assert (await store.load("resp_2"))["response"]["status"] == "failed"  # type: ignore[index]


async def test_many_streams_are_followed_through_one_connection(redis):
    """Thirty open streams and their writer share a pool of three connections."""
    keys = RedisKeys("t3")
    runs, store = BackgroundRuns(redis, keys, TTL_S), ResponseStore(redis, keys, TTL_S)
    tails = EventTails(runs)
    ids = [f"resp_{i}" for i in range(30)]
    for response_id in ids:
        await _begin(runs, response_id)

    async def read(response_id: str) -> list[int]:
        frames = tail(runs, tails, store, response_id, after=0)
        return [decode_frame(frame)["sequence_number"] async for frame in frames]

    readers = [asyncio.create_task(read(response_id)) for response_id in ids]
    for number in range(2, 8):
        for response_id in ids:
            event = [_event("response.output_text.delta", number)]
            assert await runs.write(response_id, "router-a", events=event) == "ok"
        await asyncio.sleep(0.01)
    done = record_json(json.dumps(_response("x", "completed")), "[]")
    for response_id in ids:
        end = [_event("response.completed", 8), StoredEvent.end(9)]
        await runs.write(response_id, "router-a", events=end, status="completed", final_record=done)
    results = await asyncio.wait_for(asyncio.gather(*readers), 20)
    assert results == [list(range(1, 9))] * len(ids)


async def test_a_cancel_whose_router_is_gone_settles_it_cancelled(redis):
    keys = RedisKeys("t4")
    runs, store = BackgroundRuns(redis, keys, TTL_S), ResponseStore(redis, keys, TTL_S)
    runs.lease_s = 0.2
    await _begin(runs, "resp_4")
    assert await runs.request_cancel("resp_4")
    await asyncio.sleep(0.3)
    state = await runs.state("resp_4")
    assert state is not None and state.cancel_requested and await runs.lapsed(state)
    await settle_abandoned(runs, store, "resp_4", state)
    assert (await store.load("resp_4"))["response"]["status"] == "cancelled"  # type: ignore[index]
    frames = [f async for f in tail(runs, EventTails(runs), store, "resp_4", after=1)]
    assert frames == []  # nothing after `response.queued`: the stream just ends
