"""A model replica serving requests from Redis: pull when the engine can admit, run,
stream output to the owning router, acknowledge when finished.

The replica is a host for any engine with the AsyncEngine interface (`ReplicaEngine`):
a single-process AsyncEngine, or a TP/EP replica whose ranks are Ray actors
(cluster/ray/engine.py) with the same methods. Nothing here imports Ray or torch.

Per request: Start handshake with the owning router (which answers with the tokens its
client already has), generate from prompt + those tokens, send Tokens with their output
offset, XACK + XDEL after the finish. A broken link aborts the engine request and
re-handshakes (the router may be back); a router that stays away for
`router_link_grace_s` means the client is gone: the request is dead-lettered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from oss_serve.cluster.replica.queue import Delivery, ReplicaQueue
from oss_serve.cluster.replica.router_link import LinkDown, RequestSession, RouterLink, RouterLinks
from oss_serve.common.logging import get_logger
from oss_serve.common.tasks import stop_tasks
from oss_serve.protos import inference_pb2, replica_link_pb2
from oss_serve.streams.kv_events import KvEventPublisher
from oss_serve.streams.redis_client import TRANSIENT_ERRORS
from oss_serve.streams.registry import ReplicaLoad

log = get_logger(__name__)
START_TIMEOUT_S = 5.0
CAPACITY_POLL_S = 0.01
FINISH_RATE_WINDOW_S = 30.0
MAX_ATTEMPTS_PER_DELIVERY = 50  # link breaks survived by one delivery before giving up


class ReplicaEngine(Protocol):
    """What a replica needs of its engine (AsyncEngine's methods)."""

    def generate(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: Any = None,
        *,
        priority: int = 0,
        resume_output_token_ids: Sequence[int] = (),
    ) -> AsyncIterator[Any]: ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> Any: ...

    def can_admit(self, num_prompt_tokens: int) -> bool: ...

    def admission_capacity(self) -> Any: ...  # AdmissionCapacity: .admits(prompt_lens)


@dataclass(frozen=True)
class ReplicaConfig:
    replica_id: str
    model: str
    pool: str = "default"
    address: str = ""
    block_size: int = 16
    max_model_len: int = 0
    heartbeat_interval_s: float = 0.5
    max_delivery_attempts: int = 3
    router_link_grace_s: float = 10.0
    pull_block_ms: int = 100


class ReplicaService:
    def __init__(
        self,
        engine: ReplicaEngine,
        queue: ReplicaQueue,
        config: ReplicaConfig,
        *,
        make_sampling_params: Callable[[dict[str, Any]], Any],
        kv_events: KvEventPublisher | None = None,
        links: RouterLinks | None = None,
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.config = config
        self.links = links or RouterLinks(config.replica_id)
        self.kv_events = kv_events
        self._make_sampling_params = make_sampling_params
        self._inflight: dict[str, Delivery] = {}
        # pulled, not yet submitted to the engine: entry id -> prompt tokens it will need
        self._starting: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._capacity = asyncio.Event()
        self._finished_at: collections.deque[float] = collections.deque()
        self._started_ts = time.time()
        self._stopping = False  # draining: no more pulls
        self._closed = False  # stopped: no more heartbeats either
        self._attempts = 0
        self.fatal = asyncio.Event()  # set when the engine died: the host should exit

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.kv_events is not None:
            self.kv_events.publish_cleared()
            await self.kv_events.flush()
        await self.queue.register(self.load_report(queued=0))
        resumed = await self.queue.own_pending()
        self._loops = [
            asyncio.create_task(self._pull_loop(collections.deque(resumed))),
            asyncio.create_task(self._heartbeat_loop()),
        ]
        if self.kv_events is not None:
            self._loops.append(asyncio.create_task(self.kv_events.run()))
        log.info(
            "replica serving",
            replica_id=self.config.replica_id,
            model=self.config.model,
            resumed=len(resumed),
        )

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Take no more requests, let running ones finish, leave the registry."""
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.stop()

    async def stop(self) -> None:
        self._stopping = self._closed = True
        if self.kv_events is not None:
            self.kv_events.stop()
        await stop_tasks([*self._loops, *self._tasks])
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self.queue.deregister()
        await self.links.aclose()

    # --- load report ------------------------------------------------------------------------

    def load_report(self, *, queued: int) -> ReplicaLoad:
        stats = self.engine.stats()
        now = time.time()
        while self._finished_at and self._finished_at[0] < now - FINISH_RATE_WINDOW_S:
            self._finished_at.popleft()
        window_s = min(FINISH_RATE_WINDOW_S, max(1.0, now - self._started_ts))
        return ReplicaLoad(
            replica_id=self.config.replica_id,
            pool=self.config.pool,
            model=self.config.model,
            address=self.config.address,
            running=int(stats.running),
            waiting=int(stats.waiting),
            queued=queued,
            max_running=int(stats.max_running),
            kv_usage=float(stats.kv_usage),
            kv_blocks_free=int(stats.kv_blocks_free),
            kv_blocks_total=int(stats.kv_blocks_total),
            block_size=self.config.block_size,
            max_model_len=self.config.max_model_len,
            finished_per_s=len(self._finished_at) / window_s,
            prefix_hits=int(stats.prefix_cache_hits),
            prefix_queries=int(stats.prefix_cache_queries),
            draining=self._stopping,
            started_ts=self._started_ts,
            heartbeat_ts=now,
        )

    async def _heartbeat_loop(self) -> None:
        outage_since: float | None = None
        while not self._closed:
            try:
                report = self.load_report(queued=await self.queue.queued())
                await self.queue.heartbeat(report)
                await self.queue.touch(list(self._inflight.values()))
                if outage_since is not None:  # Redis is back: judge other replicas afresh
                    self.queue.forget_observations()
                    outage_since = None
                await self.queue.refresh_dead_replicas()
                for dead in self.queue.dead_replicas:
                    await self.queue.remove_if_drained(dead)
            except TRANSIENT_ERRORS as err:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("redis unreachable from replica", error=str(err))
            await asyncio.sleep(self.config.heartbeat_interval_s)

    # --- pulling ----------------------------------------------------------------------------

    async def _pull_loop(self, backlog: collections.deque[Delivery]) -> None:
        while not self._stopping:
            try:
                if not backlog:
                    if not self._has_room_for(self.config.block_size):
                        await self._wait_for_capacity()
                        continue
                    backlog.extend(
                        await self.queue.claim_from_dead(1)
                        or await self.queue.pull(self.config.pull_block_ms)
                    )
                    continue
                delivery = backlog[0]
                prompt_len = len(delivery.record.prompt_token_ids) if delivery.record else 0
                busy = bool(self._inflight or self._starting)
                if delivery.record is not None and busy and not self._has_room_for(prompt_len):
                    await self._wait_for_capacity()
                    continue
                backlog.popleft()
                if delivery.entry_id in self._inflight:  # delivered again while it runs here
                    continue  # (a Redis failover lost the read): one run is enough
                self._starting[delivery.entry_id] = prompt_len
                self._spawn(self._serve(delivery))
            except TRANSIENT_ERRORS as err:
                log.warning("redis unreachable while pulling", error=str(err))
                await asyncio.sleep(0.2)

    def _has_room_for(self, prompt_len: int) -> bool:
        """Can the engine start this prompt too, beside those pulled and still starting?
        (A burst is pulled at once, one entry per free slot and its KV blocks.)"""
        capacity = self.engine.admission_capacity()
        return bool(capacity.admits([*self._starting.values(), prompt_len]))

    async def _wait_for_capacity(self) -> None:
        self._capacity.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._capacity.wait(), CAPACITY_POLL_S)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- one request ------------------------------------------------------------------------

    async def _serve(self, delivery: Delivery) -> None:
        self._inflight[delivery.entry_id] = delivery
        try:
            reason = self._refusal(delivery)
            if reason:
                await self._finish(delivery, dead_letter_reason=reason)
                if delivery.record is not None:
                    await self._notify_failure(delivery, reason)
                return
            await self._run_with_router(delivery)
        except Exception as err:
            await self._fail_unexpectedly(delivery, err)
        finally:
            self._starting.pop(delivery.entry_id, None)
            self._inflight.pop(delivery.entry_id, None)
            self._finished_at.append(time.time())
            self._capacity.set()

    async def _fail_unexpectedly(self, delivery: Delivery, err: Exception) -> None:
        """An engine that died leaves the entry pending for another replica (this process
        exits: see `fatal`); any other error fails the request for good, with the reason."""
        if not getattr(self.engine, "is_running", True):
            log.error(
                "engine stopped; leaving the entry to another replica", entry_id=delivery.entry_id
            )
            self.fatal.set()
            return
        log.exception("request handling failed", entry_id=delivery.entry_id)
        reason = f"replica error: {err!r}"
        await self._finish(delivery, dead_letter_reason=reason)
        if delivery.record is not None:
            await self._notify_failure(delivery, reason)

    def _refusal(self, delivery: Delivery) -> str:
        record = delivery.record
        if record is None:
            return ""
        if record.deadline_unix_s and time.time() > record.deadline_unix_s:
            return "its deadline passed before it started"
        if delivery.delivery_count > self.config.max_delivery_attempts:
            return f"delivered {delivery.delivery_count} times without finishing"
        return ""

    async def _run_with_router(self, delivery: Delivery) -> None:
        record = delivery.record
        if record is None:  # withdrawn after delivery
            await self._finish(delivery)
            return
        link = self.links.get(record.reply_to)
        gave_up_at = time.monotonic() + self.config.router_link_grace_s
        for _ in range(MAX_ATTEMPTS_PER_DELIVERY):
            try:
                await link.connect()
            except LinkDown:
                if time.monotonic() > gave_up_at:
                    break
                await asyncio.sleep(0.2)
                continue
            outcome = await self._attempt(link, delivery)
            if outcome.kind == "retry":
                gave_up_at = time.monotonic() + self.config.router_link_grace_s
                continue
            if outcome.kind == "failed":
                self._send_failure(link, delivery, outcome.reason, invalid=outcome.invalid)
                await self._finish(delivery, dead_letter_reason=outcome.reason)
            elif outcome.kind == "done":
                await self._finish(delivery)
            return  # superseded: the entry is another replica's now
        await self._finish(
            delivery, dead_letter_reason=f"owning router {record.reply_to} unreachable"
        )

    async def _attempt(self, link: RouterLink, delivery: Delivery) -> Outcome:
        """One Start handshake and, if accepted, one generation."""
        record = delivery.record
        assert record is not None
        session = link.open(record.request_id, delivery.entry_id)
        try:
            start = replica_link_pb2.Start(
                request_id=record.request_id,
                entry_id=delivery.entry_id,
                replica_id=self.config.replica_id,
                delivery_count=delivery.delivery_count,
            )
            try:
                reply = await link.start(session, start, START_TIMEOUT_S)
            except LinkDown:
                return Outcome("retry")
            if not reply.accept:  # finished, cancelled, duplicate or unknown: nothing to run
                return Outcome("superseded" if reply.reason == "superseded" else "done")
            return await self._generate(link, session, delivery, list(reply.emitted_token_ids))
        finally:
            link.close(session)

    async def _generate(
        self, link: RouterLink, session: RequestSession, delivery: Delivery, emitted: list[int]
    ) -> Outcome:
        record = delivery.record
        assert record is not None
        self._attempts += 1
        engine_id = (
            f"{record.request_id}:{delivery.entry_id}:{delivery.delivery_count}:{self._attempts}"
        )
        try:
            params = await asyncio.to_thread(  # may compile a grammar: off the event loop
                self._make_sampling_params, engine_sampling_args(record.sampling, emitted)
            )
        except ValueError as err:
            return Outcome("failed", f"invalid request: {err}", invalid=True)
        pump = asyncio.create_task(self._pump(link, delivery, engine_id, params, emitted))
        stopped = asyncio.create_task(session.stopped.wait())
        try:
            await asyncio.wait({pump, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if pump.done():
            outcome = pump.result()
            if outcome.kind == "done":  # the finish is sent: wait for the router's receipt
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        _first(session.finished, session.stopped), START_TIMEOUT_S
                    )
                if session.lost and not session.finished.is_set():
                    return Outcome("retry")  # re-handshake: the router says whether it has it
            return outcome
        await self.engine.abort(engine_id)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
        if session.lost:
            return Outcome("retry")
        superseded = session.cancel is not None and session.cancel.superseded
        return Outcome("superseded" if superseded else "done")

    async def _pump(
        self, link: RouterLink, delivery: Delivery, engine_id: str, params: Any, emitted: list[int]
    ) -> Outcome:
        """Run the engine and send its output; 'done' once the finish is sent."""
        record = delivery.record
        assert record is not None
        offset = len(emitted)
        self._starting.pop(delivery.entry_id, None)  # the engine counts it from here on
        if offset >= record.sampling.max_tokens > 0:
            link.send(_tokens(delivery, self.config.replica_id, offset, [], [], "length", 0))
            return Outcome("done")
        top_k = record.sampling.logprobs if record.sampling.HasField("logprobs") else None
        stream = self.engine.generate(  # continues exactly after `emitted` (seeded sampling too)
            engine_id,
            list(record.prompt_token_ids),
            params,
            priority=record.priority,
            resume_output_token_ids=emitted,
        )
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for output in stream:
                    completion = output.outputs[0]
                    ids = [int(t) for t in completion.token_ids]
                    logprobs = (
                        _logprobs(ids, completion.logprobs, top_k) if top_k is not None else []
                    )
                    finish = completion.finish_reason or ""
                    cached = int(output.num_cached_tokens or 0)
                    if ids or finish:
                        link.send(
                            _tokens(
                                delivery,
                                self.config.replica_id,
                                offset,
                                ids,
                                logprobs,
                                finish,
                                cached,
                            )
                        )
                    offset += len(ids)
                    if finish:
                        return Outcome("done")
        except LinkDown:
            return Outcome("retry")
        except ValueError as err:  # the engine refused the input (InvalidRequestError)
            return Outcome("failed", f"invalid request: {err}", invalid=True)
        return Outcome("failed", "the engine ended the request without a finish reason")

    async def _finish(self, delivery: Delivery, dead_letter_reason: str = "") -> None:
        """XACK + XDEL (optionally dead-lettering), riding out a Redis restart."""
        while True:
            try:
                if not await self.queue.ack(delivery, dead_letter_reason):
                    log.info("entry not acknowledged: no longer ours", entry_id=delivery.entry_id)
                return
            except TRANSIENT_ERRORS as err:
                log.warning("redis unreachable while acknowledging, retrying", error=str(err))
                await asyncio.sleep(0.2)

    async def _notify_failure(self, delivery: Delivery, reason: str) -> None:
        record = delivery.record
        assert record is not None
        link = self.links.get(record.reply_to)
        with contextlib.suppress(LinkDown):
            await link.connect()
            self._send_failure(link, delivery, reason, invalid=False)

    def _send_failure(
        self, link: RouterLink, delivery: Delivery, reason: str, *, invalid: bool
    ) -> None:
        record = delivery.record
        assert record is not None
        failure = replica_link_pb2.Failure(
            request_id=record.request_id,
            entry_id=delivery.entry_id,
            replica_id=self.config.replica_id,
            delivery_count=delivery.delivery_count,
            reason=reason,
            invalid_request=invalid,
        )
        with contextlib.suppress(LinkDown):
            link.send(replica_link_pb2.ReplicaMessage(failure=failure))


@dataclass(frozen=True)
class Outcome:
    """How one attempt at a delivery ended."""

    kind: Literal["done", "superseded", "retry", "failed"]
    reason: str = ""
    invalid: bool = False


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def engine_sampling_args(
    sampling: inference_pb2.SamplingParams, emitted: Sequence[int] = ()
) -> dict[str, Any]:
    """vLLM-named SamplingParams arguments of a queued request. The engine counts the
    `emitted` tokens (given to it as resume_output_token_ids) towards max/min_tokens itself;
    a structured-output matcher is advanced over them here."""
    args: dict[str, Any] = {}
    for name in (
        "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "min_tokens",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "ignore_eos", "logprobs",
    ):  # fmt: skip
        if sampling.HasField(name):
            args[name] = getattr(sampling, name)
    if sampling.stop:
        args["stop"] = list(sampling.stop)
    else:
        args["detokenize"] = False  # the router detokenizes; the engine needs text only for stops
    if sampling.stop_token_ids:
        args["stop_token_ids"] = list(sampling.stop_token_ids)
    if sampling.logit_bias:
        args["logit_bias"] = dict(sampling.logit_bias)
    if sampling.HasField("structured_output"):  # the host builds the grammar processor
        args["extra_args"] = {
            "structured_output": sampling.structured_output.SerializeToString(),
            "structured_output_resume": list(emitted),
        }
    return args


def _tokens(
    delivery: Delivery,
    replica_id: str,
    offset: int,
    ids: list[int],
    logprobs: list[inference_pb2.TokenLogprob],
    finish: str,
    cached: int,
) -> replica_link_pb2.ReplicaMessage:
    assert delivery.record is not None
    tokens = replica_link_pb2.Tokens(
        request_id=delivery.record.request_id,
        entry_id=delivery.entry_id,
        replica_id=replica_id,
        delivery_count=delivery.delivery_count,
        offset=offset,
        token_ids=ids,
        logprobs=logprobs,
        finish_reason=finish,
        num_cached_tokens=cached,
    )
    return replica_link_pb2.ReplicaMessage(tokens=tokens)


def _logprobs(ids: list[int], per_token: Any, top_k: int) -> list[inference_pb2.TokenLogprob]:
    """The engine's [{token_id: Logprob}] per output token as protobuf: the chosen token,
    and the top_k most likely (which include the chosen one when it ranks among them)."""
    if not per_token or len(per_token) != len(ids):
        return []
    out = []
    for token_id, candidates in zip(ids, per_token, strict=True):
        chosen = candidates.get(token_id)
        ranked = sorted((lp.rank or 0, t, lp.logprob) for t, lp in candidates.items())
        out.append(
            inference_pb2.TokenLogprob(
                token_id=token_id,
                logprob=chosen.logprob if chosen is not None else 0.0,
                rank=(chosen.rank or 0) if chosen is not None else 0,
                top_logprobs=[
                    inference_pb2.TopLogprob(token_id=t, logprob=lp, rank=rank)
                    for rank, t, lp in ranked
                    if 0 < rank <= top_k
                ],
            )
        )
    return out
