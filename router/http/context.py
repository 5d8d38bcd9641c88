"""What every route needs: the pipeline, auth and limits, metrics, and per-request
bookkeeping (latency metrics, usage accounting, token charges) in one place."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from fastapi import Request
from redis.asyncio import Redis

from oss_serve.common.logging import get_logger
from oss_serve.protos import inference_pb2
from oss_serve.router.auth.keys import ApiKey, Authenticator
from oss_serve.router.auth.limits import RateLimiter
from oss_serve.router.auth.usage import Usage, UsageRecorder
from oss_serve.router.http.errors import ApiError
from oss_serve.router.metrics import RequestTimer, RouterMetrics
from oss_serve.router.pipeline import RequestPipeline, TokenChunk
from oss_serve.streams.keys import RedisKeys

log = get_logger(__name__)


@dataclass(frozen=True)
class ApiLimits:
    """Request size limits (400 / 413 beyond them)."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_messages: int = 4096
    max_tools: int = 256
    max_n: int = 16
    response_ttl_s: int = 24 * 3600  # stored Responses (previous_response_id)


@dataclass
class ApiContext:
    pipeline: RequestPipeline
    redis: Redis
    keys: RedisKeys
    authenticator: Authenticator
    limiter: RateLimiter
    usage: UsageRecorder
    metrics: RouterMetrics
    limits: ApiLimits = field(default_factory=ApiLimits)
    owned_by: str = "oss-serve"
    admin_api_key: str | None = None  # allows the runtime LoRA load/unload endpoints
    created_unix_s: int = field(default_factory=lambda: int(time.time()))
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    async def authenticate(self, request: Request) -> ApiKey:
        """The caller's key from `Authorization: Bearer` (or `api-key`); 401 otherwise."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else None
        presented = presented or request.headers.get("api-key")
        key = await self.authenticator.authenticate(presented)
        if key is None:
            message = (
                "invalid API key"
                if presented
                else "missing API key: send Authorization: Bearer <key>"
            )
            raise ApiError(401, message, code="invalid_api_key")
        return key

    async def admit(self, key: ApiKey, prompt_tokens: int) -> None:
        """Charge the key's rate limits; 429 with Retry-After when over one."""
        decision = await self.limiter.admit(key, prompt_tokens)
        if decision.allowed:
            return
        self.metrics.rate_limited.labels(decision.limit).inc()
        per_min = key.requests_per_min if decision.limit == "requests" else key.tokens_per_min
        detail = (
            f"this request alone ({prompt_tokens} prompt tokens) exceeds the key's limit"
            if decision.never_fits
            else f"retry after {decision.retry_after_s:.0f} s"
        )
        raise ApiError(
            429,
            f"rate limit reached: {per_min} {decision.limit} per minute for this key; {detail}",
            code=f"rate_limit_{decision.limit}",
            headers={"Retry-After": str(int(decision.retry_after_s))},
        )

    def track(self, key: ApiKey, model: str, started_s: float) -> RequestTracker:
        return RequestTracker(self, key, model, started_s)

    def detach(self, coroutine: object) -> None:
        """Fire-and-forget bookkeeping that must outlive a cancelled request task."""
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)  # type: ignore[call-overload]
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class RequestTracker:
    """Latency metrics from raw token chunks; usage and token charges when it ends."""

    def __init__(self, ctx: ApiContext, key: ApiKey, model: str, started_s: float) -> None:
        self._ctx = ctx
        self._key = key
        self._timer = RequestTimer(ctx.metrics, model or "default", started_s)
        self._done = False
        ctx.metrics.in_flight.inc()

    def on_tokens(self, chunk: TokenChunk) -> None:
        self._timer.on_tokens(len(chunk.token_ids), time.monotonic(), chunk.queue_time_s)

    def finish(self, finish_reason: str, usage: inference_pb2.Usage | None) -> None:
        """Record one finished generation (call once per choice)."""
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
        self._ctx.detach(self._account(record))

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._ctx.metrics.in_flight.dec()

    async def _account(self, usage: Usage) -> None:
        try:
            await self._ctx.usage.record(self._key.key_id, usage)
            await self._ctx.limiter.charge_tokens(self._key, usage.completion_tokens)
        except Exception as err:  # accounting must never fail a served request
            log.warning("usage accounting failed", key_id=self._key.key_id, error=str(err))
