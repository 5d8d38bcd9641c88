"""Pumping the engine for one accepted delivery: generate after the tokens the router
already has, send each output as Tokens with its offset, and stop the engine's request
when the router cancels it or the link breaks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from oss_serve.cluster.replica.config import ReplicaConfig
from oss_serve.cluster.replica.engine_protocol import ReplicaEngine
from oss_serve.cluster.replica.handshake import START_TIMEOUT_S
from oss_serve.cluster.replica.inflight import InFlight
from oss_serve.cluster.replica.outcome import Outcome
from oss_serve.cluster.replica.queue import Delivery
from oss_serve.cluster.replica.router_link import LinkDown, RequestSession, RouterLink
from oss_serve.cluster.replica.sampling import engine_sampling_args
from oss_serve.protos import inference_pb2, replica_link_pb2

FINISH_RECEIPT_TIMEOUT_S = START_TIMEOUT_S


class EnginePump:
    def __init__(
        self,
        engine: ReplicaEngine,
        config: ReplicaConfig,
        make_sampling_params: Callable[[dict[str, Any]], Any],
        inflight: InFlight,
    ) -> None:
        self.engine = engine
        self.config = config
        self.replica_id = config.replica_id
        self._make_sampling_params = make_sampling_params
        self.inflight = inflight
        self._attempts = 0  # makes every engine request id unique

    async def run(
        self, link: RouterLink, session: RequestSession, delivery: Delivery, emitted: list[int]
    ) -> Outcome:
        """Generate until the finish is sent and received, or the session stops."""
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
        lora = self._adapter_of(record.model)
        if lora is False:
            reason = f"invalid request: model {record.model!r} is not served by this replica"
            return Outcome("failed", reason, invalid=True)
        pump = asyncio.create_task(self._pump(link, delivery, engine_id, params, emitted, lora))
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
                        _first(session.finished, session.stopped), FINISH_RECEIPT_TIMEOUT_S
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

    def _adapter_of(self, model: str) -> Any:
        """The LoRA adapter a record's model names: None for the base model, False if unknown."""
        if not model or model == self.config.model:
            return None
        lora = self.engine.lora_request(model) if self.config.max_loras else None
        return False if lora is None else lora

    async def _pump(
        self,
        link: RouterLink,
        delivery: Delivery,
        engine_id: str,
        params: Any,
        emitted: list[int],
        lora: Any = None,
    ) -> Outcome:
        """Run the engine and send its output; 'done' once the finish is sent."""
        record = delivery.record
        assert record is not None
        offset = len(emitted)
        self.inflight.submitted(delivery.entry_id)
        if offset >= record.sampling.max_tokens > 0:
            link.send(_tokens(delivery, self.replica_id, offset, [], [], "length", 0))
            return Outcome("done")
        top_k = record.sampling.logprobs if record.sampling.HasField("logprobs") else None
        stream = self.engine.generate(  # continues exactly after `emitted` (seeded sampling too)
            engine_id,
            list(record.prompt_token_ids),
            params,
            priority=record.priority,
            resume_output_token_ids=emitted,
            lora_request=lora,
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
                                delivery, self.replica_id, offset, ids, logprobs, finish, cached
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


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


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
