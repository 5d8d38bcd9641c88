"""Connecting to Redis and riding out its restarts and failovers.

One `connect()` for every URL scheme: `redis://`, `rediss://`, `unix://` (a single server)
and `redis+sentinel://` / `rediss+sentinel://` (a primary found through Redis Sentinel):

    redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2]...]/service[/db]
        [?sentinel_password=...&sentinel_username=...]

The password in the URL is the data nodes' (primary and replicas); sentinels that have a
password of their own take it from `sentinel_password`. Ports default to 26379.

Every process connects through `connect_from(settings)`: the URL may carry a password
(`redis://:PASSWORD@host:port/0`) or take it from OSS_SERVE_REDIS_PASSWORD, and `rediss://`
speaks TLS, its CA and client certificate as query parameters
(`rediss://host:6380/0?ssl_ca_certs=/etc/redis-tls/ca.crt`, `ssl_certfile`, `ssl_keyfile`).

Every queue operation goes through `retry_transient`: a connection error (Redis
restarting, a failover promoting a replica, loading its AOF) is retried with backoff until
a time limit, so a Redis restart or failover under load delays requests instead of losing
them. A Sentinel client asks the sentinels for the primary on every new connection, and a
connection to a primary that was demoted answers READONLY, which redis-py turns into a
connection error: both are transient here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload
from urllib.parse import parse_qs, unquote, urlsplit

import redis as redis_sync
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.sentinel import Sentinel as BlockingSentinel

from oss_serve.common.logging import get_logger
from oss_serve.common.settings import Settings

log = get_logger(__name__)
T = TypeVar("T")

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # includes MasterNotFoundError (no primary during a failover)
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,  # a demoted primary, on a plain redis:// connection
    ConnectionError,
    OSError,
)


class RedisUnavailable(RuntimeError):
    """Redis stayed unreachable for longer than the operation's time limit."""


class RedisUrlError(ValueError):
    """A Redis URL that cannot be used; the message says which part is wrong."""


@dataclass(frozen=True)
class SentinelUrl:
    """A `redis+sentinel://` URL, parsed."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        parts = urlsplit(url)
        if parts.scheme not in SENTINEL_SCHEMES:
            raise RedisUrlError(f"not a Sentinel URL (scheme {parts.scheme!r})")
        credentials, _, hosts = parts.netloc.rpartition("@")
        username, _, password = credentials.partition(":")
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise RedisUrlError(
                "a redis+sentinel:// URL names the monitored service after the hosts: "
                "redis+sentinel://host1:26379,host2:26379/mymaster[/db]"
            )
        try:
            db = int(path[1]) if len(path) > 1 else 0
        except ValueError:
            raise RedisUrlError(
                f"the database after the service name is a number: {path[1]!r}"
            ) from None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return cls(
            sentinels=tuple(_host_port(h) for h in hosts.split(",") if h),
            service_name=unquote(path[0]),
            db=db,
            username=unquote(username) or None,
            password=unquote(password) or None,
            sentinel_username=query.get("sentinel_username") or None,
            sentinel_password=query.get("sentinel_password") or None,
            ssl=parts.scheme == "rediss+sentinel",
        )

    def client_options(self) -> dict[str, Any]:
        """Connection options of the data nodes (primary) and of the sentinels."""
        options: dict[str, Any] = {"db": self.db}
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password
        if self.ssl:
            options["ssl"] = True
        return options

    def sentinel_options(self, socket_options: dict[str, Any]) -> dict[str, Any]:
        options = dict(socket_options)
        if self.sentinel_username:
            options["username"] = self.sentinel_username
        if self.sentinel_password:
            options["password"] = self.sentinel_password
        return options


def _host_port(text: str) -> tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not separator:
        host, port = text, ""
    host = host.strip("[]")  # [::1]:26379
    if not host:
        raise RedisUrlError(f"sentinel address {text!r} has no host")
    try:
        return host, int(port) if port else DEFAULT_SENTINEL_PORT
    except ValueError:
        raise RedisUrlError(f"sentinel address {text!r}: the port is not a number") from None


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def _socket_options(socket_timeout_s: float | None) -> dict[str, Any]:
    return {
        "socket_keepalive": True,
        "socket_connect_timeout": 2.0,
        "socket_timeout": socket_timeout_s,
    }


@overload
def connect(
    url: str,
    *,
    blocking: Literal[False] = False,
    socket_timeout_s: float | None = None,
    password: str | None = None,
) -> Redis: ...


@overload
def connect(
    url: str,
    *,
    blocking: Literal[True],
    socket_timeout_s: float | None = None,
    password: str | None = None,
) -> redis_sync.Redis: ...


def connect(
    url: str,
    *,
    blocking: bool = False,
    socket_timeout_s: float | None = None,
    password: str | None = None,
) -> Redis | redis_sync.Redis:
    """A client for `url` with bytes replies (queue records are protobuf) and keep-alives:
    asyncio (routers, replicas) or, with `blocking`, a plain client (autoscaler, probes).
    `password` is the data nodes' when the URL carries none."""
    sockets = _socket_options(socket_timeout_s)
    if not is_sentinel_url(url):
        client_class = redis_sync.Redis if blocking else Redis
        return client_class.from_url(  # a password inside the URL takes precedence
            url, decode_responses=False, health_check_interval=10, password=password, **sockets
        )
    target = SentinelUrl.parse(url)
    sentinel_options = target.sentinel_options(sockets)
    client_options = {
        "decode_responses": False,
        "health_check_interval": 10,
        **({"password": password} if password else {}),
        **target.client_options(),
    }
    if blocking:
        blocking_sentinel = BlockingSentinel(
            list(target.sentinels), sentinel_kwargs=sentinel_options, **sockets
        )
        return blocking_sentinel.master_for(target.service_name, **client_options)
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options, **sockets)
    return sentinel.master_for(target.service_name, redis_class=Redis, **client_options)


@overload
def connect_from(
    settings: Settings, *, blocking: Literal[False] = False, socket_timeout_s: float | None = None
) -> Redis: ...


@overload
def connect_from(
    settings: Settings, *, blocking: Literal[True], socket_timeout_s: float | None = None
) -> redis_sync.Redis: ...


def connect_from(
    settings: Settings, *, blocking: bool = False, socket_timeout_s: float | None = None
) -> Redis | redis_sync.Redis:
    """The client of settings.redis_url, with settings.redis_password when the URL has none."""
    if settings.redis_url is None:
        raise ValueError("no Redis: give --redis-url (or OSS_SERVE_REDIS_URL)")
    url = settings.redis_url.get_secret_value()
    secret = settings.redis_password
    password = secret.get_secret_value() if secret is not None else None
    if blocking:
        return connect(url, blocking=True, socket_timeout_s=socket_timeout_s, password=password)
    return connect(url, socket_timeout_s=socket_timeout_s, password=password)


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
