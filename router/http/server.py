"""The HTTP API's server: uvicorn on the router's event loop, beside the gRPC server, over
the same pipeline (one process, one view of the cluster, one set of replica links)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from oss_serve.common.logging import get_logger
from oss_serve.common.settings import Settings
from oss_serve.router.auth.keys import ApiKeyStore, Authenticator
from oss_serve.router.auth.limits import RateLimiter
from oss_serve.router.auth.usage import UsageRecorder
from oss_serve.router.http.app import create_app
from oss_serve.router.http.context import ApiContext, ApiLimits
from oss_serve.router.metrics import RouterMetrics
from oss_serve.streams.keys import RedisKeys

if TYPE_CHECKING:
    from fastapi import FastAPI

    from oss_serve.router.server import RouterServer

log = get_logger(__name__)


def api_context(router: RouterServer, settings: Settings) -> ApiContext:
    """Auth, limits, usage and metrics around the router's pipeline."""
    if router.pipeline is None:
        raise RuntimeError("start the router before its HTTP API")
    keys = RedisKeys(settings.redis_namespace)
    local_key = settings.api_key.get_secret_value() if settings.api_key else None
    authenticator = Authenticator(
        ApiKeyStore(router.redis, keys),
        local_key=local_key,
        required=settings.require_api_key,
        local_requests_per_min=settings.api_key_requests_per_min,
        local_tokens_per_min=settings.api_key_tokens_per_min,
    )
    view = router.view
    return ApiContext(
        pipeline=router.pipeline,
        redis=router.redis,
        keys=keys,
        authenticator=authenticator,
        limiter=RateLimiter(router.redis, keys),
        usage=UsageRecorder(router.redis, keys),
        metrics=RouterMetrics(lambda: view.replicas),
        limits=ApiLimits(
            max_body_bytes=settings.max_request_body_bytes,
            max_messages=settings.max_request_messages,
            max_tools=settings.max_request_tools,
            max_n=settings.max_request_n,
            response_ttl_s=settings.response_store_ttl_s,
        ),
        admin_api_key=settings.admin_api_key.get_secret_value() if settings.admin_api_key else None,
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the router process owns SIGTERM/SIGINT and stops this server itself


class HttpServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self._socket = _bind(host, port)
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError(f"the HTTP server on {self.url} stopped during start-up")
            await asyncio.sleep(0.01)
        log.info("http api serving", url=self.url)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket says it is TCP; with proto 0 each keep-alive answer waited ~40 ms (Nagle + the
    # client's delayed ACK) between its header and body writes.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen for HTTP on {host}:{port} (port taken?): {err}") from err
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def start_http_api(router: RouterServer, settings: Settings) -> HttpServer:
    server = HttpServer(
        create_app(api_context(router, settings)), settings.host, settings.http_port
    )
    await server.start()
    return server
