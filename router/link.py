"""The router's end of the replica links, and the requests this router owns.

Replicas connect to the router that owns a request (the queue record's `reply_to`) with
one bidirectional stream each (`ReplicaLink.Connect`). The owner is the single source of
truth for what its client has received: a replica asks to run a delivery (`Start`), the
owner accepts the newest delivery of the request's entry and answers with the tokens
already emitted, so a resumed request continues after exactly those; tokens from any
other delivery are refused with `Cancel(superseded)`; duplicated tokens (a resume that
re-sends) are dropped by offset. All of this runs on the event loop, so switching owner
and snapshotting the emitted tokens is one atomic step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from oss_serve.common.logging import get_logger
from oss_serve.protos import inference_pb2, replica_link_pb2, replica_link_pb2_grpc

log = get_logger(__name__)


@dataclass(frozen=True)
class Delivery:
    """Which replica runs which delivery of the request's queue entry."""

    entry_id: str
    replica_id: str
    delivery_count: int


@dataclass
class LinkEvent:
    """Output for the pipeline: new tokens, the finish, or a failure."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[inference_pb2.TokenLogprob] = field(default_factory=list)
    finish_reason: str = ""
    failure: str = ""
    invalid_request: bool = False


class OwnedRequest:
    """A request whose client stream this router holds."""

    def __init__(
        self,
        request_id: str,
        *,
        max_tokens: int,
        stop_token_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.request_id = request_id
        self.max_tokens = max_tokens
        self.stop_token_ids = stop_token_ids
        self.emitted: list[int] = []
        self.events: asyncio.Queue[LinkEvent] = asyncio.Queue()
        self.stream = ""
        self.entry_id = ""  # the accepted queue entry ('' until enqueued or first Start)
        self.owner: Delivery | None = None
        self.finished = False
        self.cancelled = False
        self.num_cached_tokens: int | None = None
        self.started_at: float | None = None  # monotonic time of the first accepted Start

    def finish(self, event: LinkEvent) -> None:
        self.finished = True
        self.events.put_nowait(event)

    def completed_by_tokens(self) -> str:
        """'length' or 'stop' when the emitted tokens already end the request, else ''."""
        if len(self.emitted) >= self.max_tokens:
            return "length"
        if self.emitted and self.emitted[-1] in self.stop_token_ids:
            return "stop"
        return ""


class LinkHub(replica_link_pb2_grpc.ReplicaLinkServicer):
    """Serves ReplicaLink.Connect and routes each replica message to its owned request."""

    def __init__(self) -> None:
        self._requests: dict[str, OwnedRequest] = {}
        self._links: dict[str, asyncio.Queue[replica_link_pb2.RouterMessage | None]] = {}
        self.superseded_count = 0

    # --- requests -----------------------------------------------------------------------

    def own(self, request: OwnedRequest) -> None:
        if request.request_id in self._requests:
            raise ValueError(f"request id {request.request_id!r} is already in flight")
        self._requests[request.request_id] = request

    def release(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def get(self, request_id: str) -> OwnedRequest | None:
        return self._requests.get(request_id)

    def __len__(self) -> int:
        return len(self._requests)

    def enqueued(self, request: OwnedRequest, stream: str, entry_id: str) -> bool:
        """Record the entry XADD returned; False if a Start already accepted another entry
        (a retried XADD duplicated the record: the caller withdraws this one)."""
        request.stream = stream
        if request.entry_id and request.entry_id != entry_id:
            return False
        request.entry_id = entry_id
        return True

    def cancel(self, request_id: str, reason: str) -> bool:
        """Stop a request: tell its running replica; True if one was told."""
        request = self._requests.get(request_id)
        if request is None or request.finished:
            return False
        request.cancelled = True
        if request.owner is None:
            return False
        return self._send(
            request.owner.replica_id,
            _cancel(request.request_id, request.owner.entry_id, reason, superseded=False),
        )

    # --- the gRPC service -------------------------------------------------------------

    async def Connect(
        self,
        request_iterator: AsyncIterator[replica_link_pb2.ReplicaMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[replica_link_pb2.RouterMessage]:
        outgoing: asyncio.Queue[replica_link_pb2.RouterMessage | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(request_iterator, outgoing))
        try:
            while (message := await outgoing.get()) is not None:
                yield message
        finally:
            reader.cancel()
            for replica_id, queue in list(self._links.items()):
                if queue is outgoing:
                    del self._links[replica_id]

    async def _read(
        self,
        messages: AsyncIterator[replica_link_pb2.ReplicaMessage],
        outgoing: asyncio.Queue[replica_link_pb2.RouterMessage | None],
    ) -> None:
        try:
            async for message in messages:
                kind = message.WhichOneof("kind")
                if kind == "hello":
                    self._links[message.hello.replica_id] = outgoing
                elif kind == "start":
                    outgoing.put_nowait(self._on_start(message.start))
                elif kind == "tokens":
                    answer = self._on_tokens(message.tokens)
                    if answer is not None:
                        outgoing.put_nowait(answer)
                elif kind == "failure":
                    self._on_failure(message.failure)
                    outgoing.put_nowait(
                        _finished(message.failure.request_id, message.failure.entry_id)
                    )
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            outgoing.put_nowait(None)

    # --- message handling -------------------------------------------------------------

    def _on_start(self, start: replica_link_pb2.Start) -> replica_link_pb2.RouterMessage:
        request = self._requests.get(start.request_id)
        reason = self._refusal(request, start)
        if reason or request is None:
            return _start_reply(start, accept=False, reason=reason or "unknown")
        ending = request.completed_by_tokens()
        if ending:  # the finish was lost with the replica that produced the last token
            request.finish(LinkEvent(finish_reason=ending))
            return _start_reply(start, accept=False, reason="finished")
        previous = request.owner
        request.entry_id = start.entry_id
        request.owner = Delivery(start.entry_id, start.replica_id, start.delivery_count)
        if request.started_at is None:
            request.started_at = time.monotonic()
        if previous is not None and previous != request.owner:
            self.superseded_count += 1
            log.info(
                "request taken over",
                request_id=request.request_id,
                previous=previous.replica_id,
                replica_id=start.replica_id,
                emitted=len(request.emitted),
            )
            if previous.replica_id != start.replica_id:  # same id: the old process is gone
                self._send(
                    previous.replica_id,
                    _cancel(request.request_id, previous.entry_id, "taken over", superseded=True),
                )
        return _start_reply(start, accept=True, emitted=request.emitted)

    @staticmethod
    def _refusal(request: OwnedRequest | None, start: replica_link_pb2.Start) -> str:
        if request is None:
            return "unknown"
        if request.finished:
            return "finished"
        if request.cancelled:
            return "cancelled"
        if request.entry_id and start.entry_id != request.entry_id:
            return "duplicate"
        owner = request.owner
        if owner is not None and start.delivery_count < owner.delivery_count:
            return "superseded"
        return ""

    def _on_tokens(self, tokens: replica_link_pb2.Tokens) -> replica_link_pb2.RouterMessage | None:
        request = self._requests.get(tokens.request_id)
        sender = Delivery(tokens.entry_id, tokens.replica_id, tokens.delivery_count)
        if request is None or request.finished:
            if tokens.finish_reason:  # a re-sent finish: the replica may acknowledge
                return _finished(tokens.request_id, tokens.entry_id)
            return _cancel(tokens.request_id, tokens.entry_id, "no longer wanted", superseded=False)
        if request.owner != sender:
            return _cancel(tokens.request_id, tokens.entry_id, "taken over", superseded=True)
        if request.cancelled:
            return None
        have = len(request.emitted)
        if tokens.offset > have:
            log.error(
                "replica skipped tokens",
                request_id=request.request_id,
                offset=tokens.offset,
                have=have,
            )
            request.finish(LinkEvent(failure=f"replica {tokens.replica_id} skipped output tokens"))
            return _cancel(tokens.request_id, tokens.entry_id, "gap in output", superseded=False)
        skip = have - tokens.offset
        new_ids = list(tokens.token_ids[skip:])
        logprobs = (
            list(tokens.logprobs[skip:]) if len(tokens.logprobs) == len(tokens.token_ids) else []
        )
        request.emitted.extend(new_ids)
        if request.num_cached_tokens is None:
            request.num_cached_tokens = tokens.num_cached_tokens
        if tokens.finish_reason:
            request.finish(LinkEvent(new_ids, logprobs, tokens.finish_reason))
            return _finished(tokens.request_id, tokens.entry_id)
        if new_ids:
            request.events.put_nowait(LinkEvent(new_ids, logprobs))
        return None

    def _on_failure(self, failure: replica_link_pb2.Failure) -> None:
        request = self._requests.get(failure.request_id)
        sender = Delivery(failure.entry_id, failure.replica_id, failure.delivery_count)
        if request is None or request.finished:
            return
        owner = request.owner
        if owner is not None and (
            owner.entry_id != sender.entry_id or owner.delivery_count > sender.delivery_count
        ):
            return
        request.finish(LinkEvent(failure=failure.reason, invalid_request=failure.invalid_request))

    def _send(self, replica_id: str, message: replica_link_pb2.RouterMessage) -> bool:
        link = self._links.get(replica_id)
        if link is None:
            return False
        link.put_nowait(message)
        return True


def _start_reply(
    start: replica_link_pb2.Start,
    *,
    accept: bool,
    reason: str = "",
    emitted: list[int] | None = None,
) -> replica_link_pb2.RouterMessage:
    reply = replica_link_pb2.StartReply(
        request_id=start.request_id,
        entry_id=start.entry_id,
        accept=accept,
        reason=reason,
        emitted_token_ids=emitted or [],
    )
    return replica_link_pb2.RouterMessage(start_reply=reply)


def _cancel(
    request_id: str, entry_id: str, reason: str, *, superseded: bool
) -> replica_link_pb2.RouterMessage:
    cancel = replica_link_pb2.Cancel(
        request_id=request_id, entry_id=entry_id, reason=reason, superseded=superseded
    )
    return replica_link_pb2.RouterMessage(cancel=cancel)


def _finished(request_id: str, entry_id: str) -> replica_link_pb2.RouterMessage:
    return replica_link_pb2.RouterMessage(
        finished=replica_link_pb2.Finished(request_id=request_id, entry_id=entry_id)
    )
