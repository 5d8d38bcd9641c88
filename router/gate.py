"""The gate of the request pipeline, the same for the HTTP and the gRPC front end: who is
calling (an API key), whether their per-key limits let the request in, and what it cost
once it ends (usage accounting, completion tokens charged, latency metrics).

A front end only says which key the client presented (HTTP `Authorization: Bearer` or
`api-key`; gRPC metadata `authorization: Bearer` or `x-api-key`); the gate decides.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from redis import exceptions as redis_errors

from oss_serve.common.logging import get_logger
from oss_serve.protos import inference_pb2
from oss_serve.router.auth.keys import ApiKey, Authenticator
from oss_serve.router.auth.limits import RateLimiter
from oss_serve.router.auth.usage import Usage, UsageRecorder
from oss_serve.router.errors import RateLimited, Unauthenticated, Unavailable
from oss_serve.router.metrics import RequestTimer, RouterMetrics

log = get_logger(__name__)
T = TypeVar("T")
MISSING_KEY = "missing API key: send `authorization: Bearer <key>`"


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key a client presented: `Bearer <key>` in authorization, else the plain header."""
    scheme, _, token = (authorization or "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    return bearer or (api_key.strip() if api_key else None) or None


@dataclass(frozen=True)
class Caller:
    """A request let through the gate: its key, and when it arrived (latency metrics)."""

    key: ApiKey
    started_s: float


class Gate:
    def __init__(
        self,
        authenticator: Authenticator,
        limiter: RateLimiter,
        usage: UsageRecorder,
        metrics: RouterMetrics,
    ) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.usage = usage
        self.metrics = metrics
        self._background: set[asyncio.Task[None]] = set()

    async def authenticate(self, presented: str | None, started_s: float | None = None) -> Caller:
        """The caller behind `presented`; Unauthenticated when a key is required and this
        one is missing or unknown."""
        started_s = time.monotonic() if started_s is None else started_s
        key = await _redis(self.authenticator.authenticate(presented))
        if key is None:
            raise Unauthenticated("invalid API key" if presented else MISSING_KEY)
        return Caller(key, started_s)

    async def limit(self, caller: Caller, prompt_tokens: int) -> None:
        """Charge one request and its prompt tokens to the key; RateLimited (with the wait
        until it would fit) when over a limit."""
        key = caller.key
        decision = await _redis(self.limiter.admit(key, prompt_tokens))
        if decision.allowed:
            return
        self.metrics.rate_limited.labels(decision.limit).inc()
        per_min = key.requests_per_min if decision.limit == "requests" else key.tokens_per_min
        detail = (
            f"this request alone ({prompt_tokens} prompt tokens) exceeds the key's limit"
            if decision.never_fits
            else f"retry after {decision.retry_after_s:.0f} s"
        )
        raise RateLimited(
            f"rate limit reached: {per_min} {decision.limit} per minute for this key; {detail}",
            retry_after_s=decision.retry_after_s,
            limit=decision.limit,
        )

    def track(self, caller: Caller, model: str) -> RequestTracker:
        return RequestTracker(self, caller, model)

    def detach(self, coroutine: object) -> None:
        """Fire-and-forget bookkeeping that must outlive a cancelled request task."""
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)  # type: ignore[call-overload]
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _redis(operation: Awaitable[T]) -> T:
    """Keys and counters live in Redis: unreachable is Unavailable (retry), never a 500."""
    try:
        return await operation
    except (redis_errors.RedisError, OSError) as err:  # OSError: a refused connection
        raise Unavailable(
            f"the key store (Redis) is unreachable; retry shortly ({type(err).__name__})"
        ) from err


class RequestTracker:
    """One generation's latency metrics from its token chunks; usage and token charges
    when it finishes; the in-flight gauge until it is closed."""

    def __init__(self, gate: Gate, caller: Caller, model: str) -> None:
        self._gate = gate
        self._key = caller.key
        self._timer = RequestTimer(gate.metrics, model or "default", caller.started_s)
        self._done = False
        gate.metrics.in_flight.inc()

    def on_tokens(self, token_count: int, queue_time_s: float | None) -> None:
        self._timer.on_tokens(token_count, time.monotonic(), queue_time_s)

    def finish(self, finish_reason: str, usage: inference_pb2.Usage | None) -> None:
        """Record the finished generation (once)."""
        self._timer.finish(
            time.monotonic(), finish_reason, usage.prompt_tokens if usage is not None else 0
        )
        if usage is None:
            return
        record = Usage(
            requests=1,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            reasoning_tokens=usage.reasoning_tokens,
        )
        self._gate.detach(self._account(record))

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._gate.metrics.in_flight.dec()

    async def _account(self, usage: Usage) -> None:
        try:
            await self._gate.usage.record(self._key.key_id, usage)
            await self._gate.limiter.charge_tokens(self._key, usage.completion_tokens)
        except Exception as err:  # accounting must never fail a served request
            log.warning("usage accounting failed", key_id=self._key.key_id, error=str(err))
