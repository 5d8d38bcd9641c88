"""The HTTP API's test stack: a real redis-server, one `oss-serve replica` subprocess on the
tiny model, and routers (gRPC + HTTP) running in this process on a background event loop,
so tests can drive them with the official `openai` client and still read their metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import redis

from oss_serve.common.settings import Settings
from oss_serve.router.http.server import HttpServer, start_http_api
from oss_serve.router.server import RouterServer
from tests.router.servers import RedisServer
from tests.router.stack import CLUSTER_TOKEN

T = TypeVar("T")
TINY_MODEL = "gpt-oss-tiny"
API_KEY = "sk-test-local-key"
MAX_BODY_BYTES = 256 * 1024
FAST_HEARTBEATS = {"OSS_SERVE_HEARTBEAT_INTERVAL_S": "0.2", "OSS_SERVE_HEARTBEAT_TTL_S": "1.0"}


class ReplicaProcess:
    """`oss-serve replica` in a subprocess, stopped by its own pid."""

    def __init__(
        self,
        redis_url: str,
        namespace: str,
        replica_id: str,
        folder: Path,
        extra_args: tuple[str, ...] = (),
        model: str = TINY_MODEL,
    ) -> None:
        env = dict(os.environ)
        env.update(FAST_HEARTBEATS)
        env.update({"OMP_NUM_THREADS": "1", "OSS_SERVE_LOG_FORMAT": "json"})
        env["OSS_SERVE_CLUSTER_TOKEN"] = CLUSTER_TOKEN
        env["OSS_SERVE_REDIS_NAMESPACE"] = namespace
        self.log_path = folder / f"{replica_id}.log"
        self._log = self.log_path.open("wb")
        args = [
            sys.executable, "-m", "oss_serve.cli", "replica", "--model", model,
            "--redis-url", redis_url, "--replica-id", replica_id, "--max-model-len", "1024",
            "--kv-cache-memory", "16000000", *extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_registered(self, redis_url: str, key: str, timeout_s: float = 90.0) -> None:
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if client.exists(key):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"replica exited:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError("the replica did not register")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


class RouterLoop:
    """An event loop in a daemon thread that hosts in-process routers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


class InProcessRouter:
    def __init__(self, loop: RouterLoop, settings: Settings) -> None:
        self._loop = loop
        self.settings = settings
        self.router: RouterServer | None = None
        self.http: HttpServer | None = None

    def start(self) -> InProcessRouter:
        async def start() -> None:
            self.router = RouterServer(self.settings)
            await self.router.start()
            self.http = await start_http_api(self.router, self.settings)
            await self.router.wait_for_replicas(1)

        self._loop.run(start())
        return self

    @property
    def base_url(self) -> str:
        assert self.http is not None
        return f"{self.http.url}/v1"

    @property
    def app_state(self) -> Any:
        assert self.http is not None
        return self.http.app.state.api

    def stop(self) -> None:
        async def stop() -> None:
            if self.http is not None:
                await self.http.stop()
            if self.router is not None:
                await self.router.stop(grace_s=0.5)

        self._loop.run(stop())


def router_settings(redis_url: str, namespace: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_namespace": namespace,
        "host": "127.0.0.1",
        "grpc_port": 0,
        "http_port": 0,
        "api_key": API_KEY,
        "cluster_token": CLUSTER_TOKEN,
        "max_request_body_bytes": MAX_BODY_BYTES,
        "max_request_messages": 64,
        "max_request_tools": 16,
        "max_queue_wait_s": 300.0,
        "request_timeout_s": 120.0,
    }
    values.update(overrides)
    return Settings(**values)


class Stack:
    """Redis + one replica + one in-process router (more routers on demand)."""

    def __init__(
        self,
        folder: Path,
        namespace: str,
        replica_args: tuple[str, ...] = (),
        *,
        model: str = TINY_MODEL,
    ) -> None:
        self.namespace = namespace
        self.redis = RedisServer(folder / "redis", appendonly=False).start()
        self.replica = ReplicaProcess(
            self.redis.url, namespace, "replica-http", folder, replica_args, model
        )
        self.loop = RouterLoop()
        self.routers: list[InProcessRouter] = []

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def start(self) -> Stack:
        self.replica.wait_registered(self.redis_url, f"{self.namespace}:replica:replica-http")
        self.add_router()
        return self

    def add_router(self, **overrides: Any) -> InProcessRouter:
        router = InProcessRouter(
            self.loop, router_settings(self.redis_url, self.namespace, **overrides)
        ).start()
        self.routers.append(router)
        return router

    @property
    def router(self) -> InProcessRouter:
        return self.routers[0]

    def replica_load(self) -> dict[str, str]:
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        return client.hgetall(f"{self.namespace}:replica:replica-http")  # type: ignore[return-value]

    def stop(self) -> None:
        for router in self.routers:
            with contextlib.suppress(Exception):
                router.stop()
        self.loop.close()
        self.replica.stop()
        self.redis.stop()
