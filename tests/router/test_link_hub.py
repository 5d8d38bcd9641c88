"""Ownership on the router's end of the replica links: one delivery owns a request at a
time, resumes continue after what the client has, duplicates and stale senders are refused."""

import asyncio

import pytest

from oss_serve.protos import replica_link_pb2 as pb
from oss_serve.router.link import LinkHub, OwnedRequest

pytestmark = pytest.mark.unit


class Replica:
    """One replica's link stream into the hub, driven message by message."""

    def __init__(self, hub: LinkHub, replica_id: str) -> None:
        self.replica_id = replica_id
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.incoming.put_nowait(pb.ReplicaMessage(hello=pb.Hello(replica_id=replica_id)))
        self.task = asyncio.create_task(hub._read(self._messages(), self.outgoing))

    async def _messages(self):
        while True:
            yield await self.incoming.get()

    async def send(self, **kind) -> list[pb.RouterMessage]:
        self.incoming.put_nowait(pb.ReplicaMessage(**kind))
        await asyncio.sleep(0.01)
        replies = []
        while not self.outgoing.empty():
            replies.append(self.outgoing.get_nowait())
        return replies

    async def start(self, request_id: str, entry_id: str, count: int = 1) -> pb.StartReply:
        start = pb.Start(
            request_id=request_id,
            entry_id=entry_id,
            replica_id=self.replica_id,
            delivery_count=count,
        )
        (reply,) = await self.send(start=start)
        return reply.start_reply

    async def tokens(self, request_id, entry_id, offset, ids, count=1, finish=""):
        tokens = pb.Tokens(
            request_id=request_id, entry_id=entry_id, replica_id=self.replica_id,
            delivery_count=count, offset=offset, token_ids=ids, finish_reason=finish,
        )  # fmt: skip
        return await self.send(tokens=tokens)


def drain(request: OwnedRequest) -> tuple[list[int], str, str]:
    ids, finish, failure = [], "", ""
    while not request.events.empty():
        event = request.events.get_nowait()
        ids += event.token_ids
        finish, failure = event.finish_reason or finish, event.failure or failure
    return ids, finish, failure


async def test_resume_after_takeover_continues_after_what_the_client_has():
    hub = LinkHub()
    request = OwnedRequest("r", max_tokens=10)
    hub.own(request)
    assert hub.enqueued(request, "stream", "1-0")
    a, b = Replica(hub, "a"), Replica(hub, "b")
    assert (await a.start("r", "1-0")).accept
    assert await a.tokens("r", "1-0", 0, [5, 6, 7]) == []
    reply = await b.start("r", "1-0", count=2)  # b claimed the dead-looking a's entry
    assert reply.accept and list(reply.emitted_token_ids) == [5, 6, 7]
    (cancel,) = [m.cancel for m in await a.send() if m.HasField("cancel")] or [None]
    assert cancel is not None and cancel.superseded
    refused = await a.tokens("r", "1-0", 3, [8])  # a is still alive: its tokens are refused
    assert refused[0].cancel.superseded
    answer = await b.tokens("r", "1-0", 2, [7, 8, 9], count=2, finish="stop")  # 7 again: dropped
    assert answer[0].HasField("finished")
    assert drain(request) == ([5, 6, 7, 8, 9], "stop", "")
    assert request.emitted == [5, 6, 7, 8, 9]


async def test_stale_duplicate_and_unknown_starts_are_refused():
    hub = LinkHub()
    request = OwnedRequest("r", max_tokens=10)
    hub.own(request)
    hub.enqueued(request, "stream", "1-0")
    a = Replica(hub, "a")
    assert (await a.start("r", "2-0")).reason == "duplicate"  # a retried XADD's twin entry
    assert (await a.start("r", "1-0", count=3)).accept
    assert (await a.start("r", "1-0", count=2)).reason == "superseded"
    assert (await a.start("nobody", "1-0")).reason == "unknown"
    hub.cancel("r", "client left")
    (told,) = await a.send()  # the owner hears of it
    assert told.cancel.request_id == "r"
    assert (await a.start("r", "1-0", count=4)).reason == "cancelled"


async def test_a_start_that_races_the_xadd_reply_wins_and_the_twin_is_reported():
    hub = LinkHub()
    request = OwnedRequest("r", max_tokens=10)
    hub.own(request)
    a = Replica(hub, "a")
    assert (await a.start("r", "5-0")).accept  # the replica pulled before XADD returned
    assert not hub.enqueued(request, "stream", "6-0")  # the caller withdraws 6-0


async def test_a_request_whose_tokens_already_reached_max_finishes_at_the_next_start():
    hub = LinkHub()
    request = OwnedRequest("r", max_tokens=3)
    hub.own(request)
    hub.enqueued(request, "stream", "1-0")
    a, b = Replica(hub, "a"), Replica(hub, "b")
    await a.start("r", "1-0")
    await a.tokens("r", "1-0", 0, [1, 2, 3])  # the replica died before sending the finish
    reply = await b.start("r", "1-0", count=2)
    assert (reply.accept, reply.reason) == (False, "finished")
    assert drain(request) == ([1, 2, 3], "length", "")


async def test_a_gap_in_offsets_fails_the_request_instead_of_corrupting_it():
    hub = LinkHub()
    request = OwnedRequest("r", max_tokens=10)
    hub.own(request)
    hub.enqueued(request, "stream", "1-0")
    a = Replica(hub, "a")
    await a.start("r", "1-0")
    await a.tokens("r", "1-0", 2, [9])
    _, _, failure = drain(request)
    assert "skipped output tokens" in failure


async def test_cancel_reaches_the_owning_replica():
    hub = LinkHub()
    request = OwnedRequest("r", max_tokens=10)
    hub.own(request)
    hub.enqueued(request, "stream", "1-0")
    a = Replica(hub, "a")
    await a.start("r", "1-0")
    assert hub.cancel("r", "client left")
    (message,) = await a.send()
    assert message.cancel.request_id == "r" and not message.cancel.superseded


def test_a_request_id_in_flight_twice_is_refused():
    hub = LinkHub()
    hub.own(OwnedRequest("r", max_tokens=1))
    with pytest.raises(ValueError, match="already in flight"):
        hub.own(OwnedRequest("r", max_tokens=1))
