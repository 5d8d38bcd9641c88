"""One router process: the public gRPC server (Inference API, health), the replica link
server on a port of its own (behind the cluster token), and the background loops that keep
its view of the replicas and their caches fresh.

The HTTP API (OpenAI-compatible) runs in the same process on `RouterServer.pipeline`.
The router holds no state that matters across restarts: everything shared is in Redis.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import uuid

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from oss_serve.common.logging import get_logger
from oss_serve.common.security import TlsFiles
from oss_serve.common.settings import Settings
from oss_serve.common.tasks import stop_tasks
from oss_serve.protos import inference_pb2, inference_pb2_grpc, replica_link_pb2_grpc
from oss_serve.router.admission import Admission
from oss_serve.router.auth.keys import ApiKeyStore, Authenticator
from oss_serve.router.auth.limits import RateLimiter
from oss_serve.router.auth.usage import UsageRecorder
from oss_serve.router.cluster_view import ClusterView
from oss_serve.router.enqueue import RequestQueue
from oss_serve.router.gate import Gate
from oss_serve.router.grpc_api import InferenceService
from oss_serve.router.idempotency import IdempotencyStore
from oss_serve.router.link import LinkHub
from oss_serve.router.link_guard import ClusterTokenGuard
from oss_serve.router.metrics import RouterMetrics
from oss_serve.router.pipeline import PipelineConfig, RequestPipeline
from oss_serve.router.policies import make_policy
from oss_serve.router.prefix_index import PrefixIndex
from oss_serve.router.request_limits import RequestLimits
from oss_serve.router.tool_sessions import ToolSessions
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.kv_events import KvEventFollower
from oss_serve.streams.redis_client import connect_from, is_sentinel_url
from oss_serve.tools.python.sandbox import SandboxUnavailable
from oss_serve.tools.server_tools import ServerTools, ToolConfigError

log = get_logger(__name__)
INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class RouterServer:
    def __init__(self, settings: Settings, *, router_id: str | None = None) -> None:
        self.settings = settings
        self.router_id = (
            router_id or f"router-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.redis = connect_from(settings)
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else ""
        keys = self._keys = RedisKeys(settings.redis_namespace)
        self.index = PrefixIndex(settings.prefix_index_max_blocks)
        self.view = ClusterView(self.redis, keys, self.index)
        self.metrics = RouterMetrics(lambda: self.view.replicas)
        self.events = KvEventFollower(self.redis, keys, self.index)
        self.hub = LinkHub()
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.link_port = 0
        self._server: grpc.aio.Server | None = None
        self._link_server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._queue = RequestQueue(
            self.redis, keys, replica_acks=_replica_acks(settings.redis_replica_acks, redis_url)
        )
        self.pipeline: RequestPipeline | None = None
        self.tools: ServerTools | None = None  # server-side tools, when --tools enables any
        self.tool_sessions = ToolSessions(settings.session_ttl_s)
        self.idempotency = IdempotencyStore(
            self.redis,
            keys,
            self.router_id,
            lease_s=settings.idempotency_lease_s,
            ttl_s=settings.idempotency_ttl_s,
        )

    @property
    def address(self) -> str:
        """The host:port of the public gRPC API (Inference, health)."""
        return f"{self.settings.host}:{self.port}"

    @property
    def link_address(self) -> str:
        """The host:port replicas use to reach this router's link (queue records carry it)."""
        host = self.settings.advertise_host or self.settings.host
        return f"{host}:{self.link_port}"

    async def start(self) -> None:
        settings = self.settings
        tls = TlsFiles.from_settings(settings)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_request_body_bytes),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        self.port = _listen(self._server, settings.host, settings.grpc_port, tls, mutual=False)
        self._link_server = self._start_link_server(tls)
        self.tools = _server_tools(settings)
        policy = make_policy(
            settings.routing_policy,
            index=self.index,
            overlap_weight=settings.prefix_overlap_weight,
            balance_abs_threshold=settings.balance_abs_threshold,
            balance_rel_threshold=settings.balance_rel_threshold,
            load_measure=settings.prefix_load_measure,
            adapter_affinity_blocks=settings.adapter_affinity_blocks,
        )
        self.pipeline = RequestPipeline(
            view=self.view,
            hub=self.hub,
            queue=self._queue,
            policy=policy,
            admission=Admission(settings.max_queue_wait_s, settings.max_queued_per_replica),
            gate=self._gate(),
            limits=RequestLimits.from_settings(settings),
            config=PipelineConfig(
                router_id=self.router_id,
                reply_to=self.link_address,
                session_ttl_s=settings.session_ttl_s,
            ),
            idempotency=self.idempotency,
        )
        inference_pb2_grpc.add_InferenceServicer_to_server(
            InferenceService(self.pipeline), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        await self._link_server.start()
        await self._server.start()
        self._tasks = [
            asyncio.create_task(self.view.run()),
            asyncio.create_task(self.events.run()),
            asyncio.create_task(self._report_health()),
            asyncio.create_task(self.idempotency.renew_forever()),
            asyncio.create_task(self.tool_sessions.run()),
        ]
        log.info(
            "router started",
            router_id=self.router_id,
            address=self.address,
            link_address=self.link_address,
            tls=tls.serves_tls,
            policy=settings.routing_policy,
            tools=sorted(settings.tools),
        )

    def _start_link_server(self, tls: TlsFiles) -> grpc.aio.Server:
        """The replica link on its own port, behind the cluster token (and mTLS with a CA)."""
        settings = self.settings
        token = settings.cluster_token.get_secret_value() if settings.cluster_token else None
        if token is None and not _is_loopback(settings.host):
            raise ValueError(
                f"the replica link would listen on {settings.host} without a cluster token: "
                "set OSS_SERVE_CLUSTER_TOKEN (the same for routers and replicas)"
            )
        if token is None:
            log.warning("the replica link has no cluster token: any local process may join")
        guard = [ClusterTokenGuard(token, self.metrics.link_refused)] if token else []
        server = grpc.aio.server(
            interceptors=guard,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                # replicas ping their idle links every 10 s: allow it (the default answers
                # pings more often than every 5 minutes with GOAWAY "too_many_pings")
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        self.link_port = _listen(
            server, settings.host, settings.effective_link_port, tls, mutual=True
        )
        replica_link_pb2_grpc.add_ReplicaLinkServicer_to_server(self.hub, server)
        return server

    def _gate(self) -> Gate:
        """Keys (`--api-key` and those in Redis), their limits, usage: one gate for gRPC and HTTP."""
        settings = self.settings
        authenticator = Authenticator(
            ApiKeyStore(self.redis, self._keys),
            local_key=settings.api_key.get_secret_value() if settings.api_key else None,
            required=settings.require_api_key,
            local_requests_per_min=settings.api_key_requests_per_min,
            local_tokens_per_min=settings.api_key_tokens_per_min,
        )
        return Gate(
            authenticator,
            RateLimiter(self.redis, self._keys),
            UsageRecorder(self.redis, self._keys),
            self.metrics,
        )

    async def _report_health(self) -> None:
        """SERVING while Redis answers and at least one replica is healthy."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while not self._stopped:
            status = serving if self.view.redis_ok and self.view.replicas else not_serving
            for service in ("", INFERENCE_SERVICE):
                await self.health.set(service, status)
            await asyncio.sleep(0.5)

    async def wait_for_replicas(self, count: int, timeout_s: float = 60.0) -> None:
        """Block until the view holds `count` healthy replicas (start-up, tests)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(self.view.replicas) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{len(self.view.replicas)} of {count} replicas registered")
            await asyncio.sleep(0.05)

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._link_server is not None:
            await self._link_server.stop(grace_s)
        self._stopped = True
        self.view.stop()
        self.events.stop()
        await stop_tasks(self._tasks)
        await self.tool_sessions.aclose()
        if self.tools is not None:
            await self.tools.aclose()
        await self.redis.aclose()
        log.info("router stopped", router_id=self.router_id)


def _server_tools(settings: Settings) -> ServerTools | None:
    """The executors of the tools --tools enables (ValueError naming a bad tool setting)."""
    if not settings.tools:
        return None
    try:
        return ServerTools.from_settings(settings)
    except ToolConfigError as err:
        raise ValueError(f"server-side tools: {err.field}: {err}") from err
    except SandboxUnavailable as err:
        raise ValueError(str(err)) from err


def _replica_acks(configured: int | None, redis_url: str) -> int:
    """Redis replicas a queued record must reach: behind Sentinel, one unless told otherwise."""
    if configured is not None:
        return configured
    return 1 if is_sentinel_url(redis_url) else 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _listen(server: grpc.aio.Server, host: str, port: int, tls: TlsFiles, *, mutual: bool) -> int:
    """Bind `server` (TLS when configured); the bound port, or OSError when taken."""
    address = f"{host}:{port}"
    if tls.serves_tls:
        bound = server.add_secure_port(address, tls.server_credentials(require_client_cert=mutual))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address} (port taken?)")
    return int(bound)


async def run_router(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully."""
    import signal

    from oss_serve.router.http.server import start_http_api

    server = RouterServer(settings)
    await server.start()
    try:
        http = await start_http_api(server, settings) if settings.http_api else None
    except BaseException:
        await server.stop(grace_s=0.0)  # e.g. the HTTP port is taken: leave nothing running
        raise
    print(f"router {server.router_id} serving gRPC on {server.address}", flush=True)
    print(f"router {server.router_id} replica link on {server.link_address}", flush=True)
    if http is not None:
        print(f"router {server.router_id} serving HTTP on {http.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    if http is not None:
        await http.stop()
    await server.stop()
