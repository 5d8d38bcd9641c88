"""The HTTP API's server: uvicorn on the router's event loop, beside the gRPC server, over
the same pipeline (one process, one view of the cluster, one set of replica links)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import uvicorn

from oss_serve.common.http_serving import EmbeddedServer, bind_listening_socket
from oss_serve.common.logging import get_logger
from oss_serve.common.security import TlsFiles
from oss_serve.common.settings import Settings
from oss_serve.router.http.app import create_app
from oss_serve.router.http.context import ApiContext
from oss_serve.router.http.slow_clients import StallLimit
from oss_serve.streams.keys import RedisKeys

if TYPE_CHECKING:
    from fastapi import FastAPI

    from oss_serve.router.server import RouterServer

log = get_logger(__name__)


def api_context(router: RouterServer, settings: Settings) -> ApiContext:
    """The routes' view of the router: its pipeline (and gate), Redis, metrics."""
    if router.pipeline is None:
        raise RuntimeError("start the router before its HTTP API")
    return ApiContext(
        pipeline=router.pipeline,
        redis=router.redis,
        keys=RedisKeys(settings.redis_namespace),
        metrics=router.metrics,
        response_ttl_s=settings.response_store_ttl_s,
        admin_api_key=settings.admin_api_key.get_secret_value() if settings.admin_api_key else None,
        tools=router.tools,
        tool_sessions=router.tool_sessions,
        max_tool_calls=settings.max_tool_calls,
    )


class HttpServer:
    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        tls: TlsFiles | None = None,
        *,
        stall_timeout_s: float = 60.0,
    ) -> None:
        self.app = app
        self.host = host
        self.tls = tls if tls is not None and tls.serves_tls else None
        self._socket = bind_listening_socket(host, port, "HTTP")
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            StallLimit(app, stall_timeout_s),
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
            ssl_certfile=self.tls.cert_path if self.tls else None,
            ssl_keyfile=self.tls.key_path if self.tls else None,
        )
        self._server = EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

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


async def start_http_api(router: RouterServer, settings: Settings) -> HttpServer:
    server = HttpServer(
        create_app(api_context(router, settings)),
        settings.host,
        settings.http_port,
        TlsFiles.from_settings(settings),
        stall_timeout_s=settings.http_stall_timeout_s,
    )
    await server.start()
    return server
