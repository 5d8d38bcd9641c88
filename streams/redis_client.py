"""Connecting to Redis and riding out its restarts.

Every process connects through `connect_from` (async) or `sync_client_from`: the URL may
carry a password (`redis://:PASSWORD@host:port/0`) or take it from OSS_SERVE_REDIS_PASSWORD,
and `rediss://` speaks TLS, its CA and client certificate as query parameters
(`rediss://host:6380/0?ssl_ca_certs=/etc/redis-tls/ca.crt`, `ssl_certfile`, `ssl_keyfile`).

Every queue operation goes through `retry_transient`: a connection error (Redis
restarting, failing over, loading its AOF) is retried with backoff until a time limit, so
a Redis restart under load delays requests instead of losing them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from oss_serve.common.logging import get_logger
from oss_serve.common.settings import Settings

log = get_logger(__name__)
T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    ConnectionError,
    OSError,
)


class RedisUnavailable(RuntimeError):
    """Redis stayed unreachable for longer than the operation's time limit."""


def connect(url: str, *, password: str | None = None) -> Redis:
    """A client for `url` with bytes replies (queue records are protobuf) and keep-alives."""
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_keepalive=True,
        socket_connect_timeout=2.0,
        health_check_interval=10,
        password=password,  # a password inside the URL takes precedence
    )


def connect_from(settings: Settings) -> Redis:
    """The async client of settings.redis_url (and redis_password, when set)."""
    url, password = _credentials(settings)
    return connect(url, password=password)


def sync_client_from(settings: Settings, **options: Any) -> redis.Redis:
    """A blocking client of the same Redis (autoscaler, probes), with `options` added."""
    url, password = _credentials(settings)
    return redis.Redis.from_url(url, password=password, **options)


def _credentials(settings: Settings) -> tuple[str, str | None]:
    if settings.redis_url is None:
        raise ValueError("no Redis: give --redis-url (or OSS_SERVE_REDIS_URL)")
    password = settings.redis_password
    return settings.redis_url.get_secret_value(), (
        password.get_secret_value() if password is not None else None
    )


async def retry_transient(
    operation: Callable[[], Awaitable[T]], *, what: str, timeout_s: float
) -> T:
    """Run `operation`, retrying connection errors with backoff for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay_s = 0.05
    while True:
        try:
            return await operation()
        except TRANSIENT_ERRORS as err:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise RedisUnavailable(f"Redis unreachable while {what}: {err}") from err
            log.warning("redis unavailable, retrying", what=what, error=str(err))
            await asyncio.sleep(min(delay_s, remaining_s))
            delay_s = min(delay_s * 2, 1.0)
