"""The one request pipeline both front ends use: authenticate -> validate -> (render) ->
limit -> admit -> route -> enqueue -> stream back.

gRPC (`grpc_api.py`) and the OpenAI HTTP API translate their wire format into a
`GenerationRequest` (or a chat body, `chat.py`), hand it here with the key the client
presented, and relay what comes out; neither has its own keys, limits, routing, queueing
or error mapping. Rate limits are charged after validation and rendering (token limits
need the prompt's length) and before anything is queued. Errors are `RequestError`s that
know their gRPC and HTTP status.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, field

from oss_serve.common.kv_hash import adapter_extra_key
from oss_serve.common.logging import get_logger
from oss_serve.common.tasks import detach
from oss_serve.common.vocab import STOP_TOKEN_IDS
from oss_serve.protos import inference_pb2, replica_link_pb2
from oss_serve.router.admission import Admission
from oss_serve.router.cluster_view import ClusterView
from oss_serve.router.enqueue import ReplicaGone, RequestQueue
from oss_serve.router.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    RequestFailed,
    Unavailable,
)
from oss_serve.router.gate import Caller, Gate, RequestTracker
from oss_serve.router.idempotency import IdempotencyStore, IdempotentRequest, fingerprint
from oss_serve.router.link import LinkEvent, LinkHub, OwnedRequest
from oss_serve.router.policies import Candidate, RouteRequest, RoutingPolicy
from oss_serve.router.prefix_index import PromptBlocks
from oss_serve.router.request_limits import (
    MAX_ID_CHARS,
    MAX_SESSION_KEY_CHARS,
    RequestLimits,
    check_length,
)
from oss_serve.router.sampling import check_prompt, check_sampling, checked_sampling
from oss_serve.streams.keys import LANES, OVERFLOW
from oss_serve.streams.redis_client import RedisUnavailable

log = get_logger(__name__)
REPLICA_POLL_S = 0.1


@dataclass(frozen=True)
class GenerationRequest:
    """A tokenized request, as both front ends hand it to the pipeline."""

    prompt_token_ids: Sequence[int]
    sampling: inference_pb2.SamplingParams = field(default_factory=inference_pb2.SamplingParams)
    model: str = ""
    request_id: str = ""  # the client's id, echoed back; a retry with it replays the answer
    choice: int = 0  # which of the client request's n choices this is
    session_key: str = ""
    lane: str = LANES[0]
    priority: int = 0
    timeout_s: float | None = None


@dataclass
class TokenChunk:
    request_id: str
    token_ids: list[int]
    logprobs: list[inference_pb2.TokenLogprob] = field(default_factory=list)
    finish_reason: str = ""
    usage: inference_pb2.Usage | None = None
    queue_time_s: float | None = None  # on the first chunk: enqueued -> a replica started it


@dataclass(frozen=True)
class PipelineConfig:
    router_id: str
    reply_to: str  # this router's link address, host:port, as replicas reach it
    session_ttl_s: float = 600.0
    replica_wait_s: float = 5.0  # how long a request waits for a healthy replica to appear


class RequestPipeline:
    def __init__(
        self,
        *,
        view: ClusterView,
        hub: LinkHub,
        queue: RequestQueue,
        policy: RoutingPolicy,
        admission: Admission,
        gate: Gate,
        limits: RequestLimits,
        config: PipelineConfig,
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        self.view = view
        self.hub = hub
        self.queue = queue
        self.policy = policy
        self.admission = admission
        self.gate = gate
        self.limits = limits
        self.config = config
        self.idempotency = idempotency

    # --- the entry points of the front ends ------------------------------------------------

    async def authenticate(self, presented_key: str | None) -> Caller:
        """The caller behind the key a client presented (Unauthenticated if none fits)."""
        return await self.gate.authenticate(presented_key)

    async def open(
        self,
        caller: Caller,
        requests: Sequence[GenerationRequest],
        on_tokens: Sequence[Callable[[TokenChunk], None]] = (),
    ) -> list[AsyncGenerator[TokenChunk, None]]:
        """The choices of one client request as tracked token streams, once they passed
        validation and the caller's limits; `on_tokens[i]` sees each chunk of stream i."""
        await self.charge(caller, requests)
        return [
            self.tracked(caller, request, on_tokens[i] if on_tokens else None)
            for i, request in enumerate(requests)
        ]

    async def charge(self, caller: Caller, requests: Sequence[GenerationRequest]) -> None:
        """Validate the requests, then charge one request and all their prompt tokens to the
        caller's limits (RateLimited when over one)."""
        for request in requests:
            self.validate(request)
        await self.gate.limit(caller, sum(len(r.prompt_token_ids) for r in requests))

    def validate(self, request: GenerationRequest) -> None:
        """What can be checked before anything is charged or queued (InvalidRequest)."""
        if request.lane not in LANES:
            raise InvalidRequest(f"lane must be one of {', '.join(LANES)}", field="lane")
        check_length(request.model, "model", MAX_ID_CHARS)
        check_length(request.request_id, "options.request_id", MAX_ID_CHARS)
        check_length(request.session_key, "options.session_key", MAX_SESSION_KEY_CHARS)
        check_prompt(request.prompt_token_ids)
        check_sampling(request.sampling)

    async def tracked(
        self,
        caller: Caller,
        request: GenerationRequest,
        on_tokens: Callable[[TokenChunk], None] | None = None,
        *,
        tracker: RequestTracker | None = None,
    ) -> AsyncGenerator[TokenChunk, None]:
        """generate() with its metrics and usage. A caller that passes its own `tracker`
        records the finish itself (chat knows the final reason and the reasoning tokens)."""
        finishes_here = tracker is None
        tracker = tracker or self.gate.track(caller, request.model)
        try:
            async with aclosing(self._retry_safe(caller, request)) as chunks:
                async for chunk in chunks:
                    tracker.on_tokens(len(chunk.token_ids), chunk.queue_time_s)
                    if on_tokens is not None:
                        on_tokens(chunk)
                    if finishes_here and chunk.finish_reason:
                        tracker.finish(chunk.finish_reason, chunk.usage)
                    yield chunk
        finally:
            tracker.close()

    def _retry_safe(
        self, caller: Caller, request: GenerationRequest
    ) -> AsyncGenerator[TokenChunk, None]:
        """generate(), or the stored answer of an earlier attempt with the same request id."""
        if not request.request_id or self.idempotency is None:
            return self.generate(request)
        identity = IdempotentRequest(
            caller.key.key_id, request.request_id, request.choice, _fingerprint(request)
        )
        return self.idempotency.run(
            identity,
            lambda: self.generate(request),
            replay=lambda stored: _replayed(request.request_id, stored),
            completion=_completion,
        )

    # --- admit -> route -> enqueue -> stream back -------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        """Stream the request's output; stopping iteration early cancels it everywhere."""
        try:
            async with aclosing(self._generate(request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except RedisUnavailable as err:
            raise Unavailable(f"the request queue is unreachable; retry shortly ({err})") from err

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        self.validate(request)
        candidates = await self._candidates(request.model)
        max_model_len = min(
            (c.load.max_model_len for c in candidates if c.load.max_model_len), default=0
        )
        sampling = checked_sampling(
            request.sampling, prompt_len=len(request.prompt_token_ids), max_model_len=max_model_len
        )
        room = self.admission.admit(candidates, self.view.overflow_backlog)
        timeout_s = self.limits.timeout_s(request.timeout_s)
        internal_id = uuid.uuid4().hex
        owned = OwnedRequest(
            internal_id,
            max_tokens=sampling.max_tokens,
            stop_token_ids=frozenset()
            if sampling.ignore_eos
            else frozenset((*STOP_TOKEN_IDS, *sampling.stop_token_ids)),
        )
        record = replica_link_pb2.QueueRecord(
            request_id=internal_id,
            router_id=self.config.router_id,
            reply_to=self.config.reply_to,
            model=request.model,
            prompt_token_ids=request.prompt_token_ids,
            sampling=sampling,
            priority=request.priority,
            lane=request.lane,
            enqueued_unix_s=time.time(),
            deadline_unix_s=time.time() + timeout_s,
        )
        adapter = request.model if self.view.is_adapter(request.model) else None
        route = RouteRequest(
            internal_id,
            PromptBlocks(
                request.prompt_token_ids,
                room[0].load.block_size or 16,
                adapter_extra_key(adapter),  # the engine keys an adapter's KV blocks alike
            ),
            _session_hash(request.session_key) if request.session_key else None,
            adapter,
        )
        self.hub.own(owned)
        routed_to = ""
        try:
            routed_to = await self._route_and_enqueue(route, record, owned, room)
            enqueued_at: float | None = time.monotonic()
            client_id = request.request_id or f"req-{internal_id}"
            async for chunk in self._stream_back(
                owned, client_id, len(record.prompt_token_ids), timeout_s
            ):
                if enqueued_at is not None and owned.started_at is not None:
                    chunk.queue_time_s = max(0.0, owned.started_at - enqueued_at)
                    enqueued_at = None
                if routed_to == OVERFLOW and owned.owner is not None:
                    self.policy.on_routed(route, owned.owner.replica_id)
                    routed_to = owned.owner.replica_id
                yield chunk
        finally:
            if not owned.finished:
                self._abandon(owned)
            self.hub.release(internal_id)

    # --- steps ------------------------------------------------------------------------

    async def _candidates(self, model: str) -> list[Candidate]:
        """Healthy replicas for `model`, waiting up to replica_wait_s for one to (re)appear
        (router start-up, a Redis restart after which heartbeats take a beat to return)."""
        deadline = time.monotonic() + self.config.replica_wait_s
        while True:
            candidates = self.view.candidates(model)
            if candidates:
                return candidates
            served = sorted({*self.view.models(), *self.view.adapters()})
            if model and served:
                raise ModelNotFound(
                    f"model {model!r} is not served here; available: {', '.join(served)}",
                    field="model",
                )
            if time.monotonic() >= deadline:
                if not self.view.redis_ok:
                    raise Unavailable("the request queue (Redis) is unreachable; retry shortly")
                raise Unavailable("no healthy replica is serving; retry shortly")
            await asyncio.sleep(REPLICA_POLL_S)

    async def _route_and_enqueue(
        self,
        route: RouteRequest,
        record: replica_link_pb2.QueueRecord,
        owned: OwnedRequest,
        room: list[Candidate],
    ) -> str:
        deadline = time.monotonic() + self.config.replica_wait_s
        while True:
            target, matched_blocks = await self._choose(route, room)
            record.routed_to = target
            try:
                stream, entry_id = await self.queue.enqueue(
                    target,
                    record,
                    session_key=route.session_key,
                    session_ttl_s=self.config.session_ttl_s,
                )
            except ReplicaGone:  # its heartbeat lapsed: gone, or back in a moment (Redis restart)
                if time.monotonic() >= deadline:
                    raise Unavailable("no replica could take the request; retry shortly") from None
                await asyncio.sleep(REPLICA_POLL_S)
                room = self.admission.admit(
                    await self._candidates(record.model), self.view.overflow_backlog
                )
                continue
            if not self.hub.enqueued(owned, stream, entry_id):  # a retried XADD landed twice
                await self.queue.withdraw(stream, entry_id)
            if target == OVERFLOW:
                self.view.note_overflow()
            else:
                self.policy.on_routed(route, target)
                self.view.note_routed(target, route.prompt.num_blocks - matched_blocks)
            return target

    async def _choose(self, route: RouteRequest, room: list[Candidate]) -> tuple[str, int]:
        """(target replica or OVERFLOW, prompt blocks believed cached there)."""
        if route.session_key:
            sticky = await self.queue.session_replica(route.session_key)
            if sticky is not None and any(c.replica_id == sticky for c in room):
                return sticky, 0
        decision = self.policy.select(route, room)
        saturated = all(0 < c.load.max_running <= c.requests for c in room)
        # every replica is full: the first one with room takes it from the overflow lane,
        # which any replica pulls, so only base-model requests go there
        overflow = not route.session_key and route.adapter is None
        if saturated and decision.matched_blocks == 0 and overflow:
            return OVERFLOW, 0
        return decision.replica_id, decision.matched_blocks

    async def _stream_back(
        self, owned: OwnedRequest, client_id: str, prompt_tokens: int, timeout_s: float
    ) -> AsyncIterator[TokenChunk]:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_s = deadline - time.monotonic()
            try:
                event = await asyncio.wait_for(owned.events.get(), max(remaining_s, 0.0))
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the request did not finish within {timeout_s:g} s"
                ) from None
            event = _merge_queued(event, owned.events)
            if event.failure:
                error = InvalidRequest if event.invalid_request else RequestFailed
                raise error(f"the request failed: {event.failure}")
            chunk = TokenChunk(client_id, event.token_ids, event.logprobs, event.finish_reason)
            if event.finish_reason:
                chunk.usage = inference_pb2.Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=len(owned.emitted),
                    cached_prompt_tokens=owned.num_cached_tokens or 0,
                )
                yield chunk
                return
            yield chunk

    def _abandon(self, owned: OwnedRequest) -> None:
        """The client went away (cancel, deadline, error): stop the request everywhere.

        A running request is cancelled over its replica's link; one still queued is
        withdrawn from its stream (and refused at Start should a replica hold it already).
        """
        told_replica = self.hub.cancel(owned.request_id, "client cancelled")
        if not told_replica and owned.stream and owned.entry_id:
            detach(self._withdraw(owned.stream, owned.entry_id))

    async def _withdraw(self, stream: str, entry_id: str) -> None:
        with suppress(Exception):
            await self.queue.withdraw(stream, entry_id)


def _merge_queued(event: LinkEvent, events: asyncio.Queue[LinkEvent]) -> LinkEvent:
    """Fold events that are already waiting into one chunk (fewer, larger messages)."""
    while not (event.finish_reason or event.failure) and not events.empty():
        more = events.get_nowait()
        if more.failure:
            return more
        event = LinkEvent(
            event.token_ids + more.token_ids, event.logprobs + more.logprobs, more.finish_reason
        )
    return event


def _fingerprint(request: GenerationRequest) -> str:
    """What makes a retry the same request: prompt, parameters, model, lane, priority."""
    return fingerprint(
        b",".join(str(t).encode() for t in request.prompt_token_ids),
        request.sampling.SerializeToString(deterministic=True),
        request.model.encode(),
        request.lane.encode(),
        str(request.priority).encode(),
    )


def _completion(chunks: list[TokenChunk]) -> inference_pb2.GenerateResponse:
    """A finished generation in one message, as stored for retries."""
    stored = inference_pb2.GenerateResponse(
        token_ids=[t for c in chunks for t in c.token_ids],
        logprobs=[lp for c in chunks for lp in c.logprobs],
        finish_reason=chunks[-1].finish_reason,
    )
    if chunks[-1].usage is not None:
        stored.usage.CopyFrom(chunks[-1].usage)
    return stored


def _replayed(client_id: str, stored: inference_pb2.GenerateResponse) -> TokenChunk:
    return TokenChunk(
        client_id,
        list(stored.token_ids),
        list(stored.logprobs),
        stored.finish_reason,
        usage=stored.usage,
        queue_time_s=0.0,
    )


def _session_hash(session_key: str) -> str:
    """Session keys are user input: store a fixed-size digest, never the raw key."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]
