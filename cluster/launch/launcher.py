"""`oss-serve up`: the whole stack on one machine, started in order and stopped in reverse.

Start: checks (ports free, model folder) -> redis-server on a free loopback port (unless
--redis-url) -> a local Ray runtime -> the router (gRPC + HTTP) in this process -> the
replicas as Ray actors, loading side by side with weight bars -> wait until the router
sees every replica -> print the URLs, the key and examples.

Stop (SIGINT / SIGTERM, or a failure while starting): the router stops accepting and
finishes what it serves, the replicas drain and stop, Ray shuts down, Redis stops. Every
step has a time limit, so a stuck part cannot keep the others running. A replica whose
engine dies is restarted under the same id, so the requests it held resume.

This process imports no torch: the replicas load the model in their actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from pydantic import SecretStr
from ray.exceptions import RayActorError, RayTaskError
from ray.util import get_placement_group
from ray.util.placement_group import remove_placement_group

from oss_serve.cluster.launch.console import Endpoints, UpConsole
from oss_serve.cluster.launch.host_actor import ReplicaStarted, spawn_replica_host_actor
from oss_serve.cluster.launch.local_processes import StartedProcesses
from oss_serve.cluster.launch.local_redis import LocalRedis
from oss_serve.cluster.ray import placement
from oss_serve.cluster.ray.placement import PlacementError, RankResources
from oss_serve.common.logging import get_logger
from oss_serve.common.security import new_cluster_token
from oss_serve.common.settings import Settings
from oss_serve.tools.demo_mcp import DEMO_MCP_LABEL, DemoMcpServer

log = get_logger(__name__)

PROGRESS_POLL_S = 0.2
REPLICAS_VISIBLE_TIMEOUT_S = 60.0
HTTP_STOP_TIMEOUT_S = 10.0
ROUTER_STOP_GRACE_S = 2.0
REPLICA_DRAIN_TIMEOUT_S = 35.0  # ReplicaService.drain waits up to 30 s for running requests
RESTART_BACKOFF_S = 2.0
PROCESS_SNAPSHOT_INTERVAL_S = 2.0
# KV cache per replica on CPU unless set (the engine's own default, 1 GiB, is allocated and
# zeroed up front: too much for a laptop demo; the demo model needs 256 B per token, so this
# holds 256K tokens; gpt-oss-20b in bf16 needs 48 KiB per token)
CPU_KV_CACHE_BYTES = 64 * 2**20


class LaunchError(RuntimeError):
    """`up` cannot start as asked; the message is one line that says what to change."""


@dataclass(frozen=True)
class LaunchPlan:
    """What to start: settings shared by the router and the replicas, and how many replicas."""

    settings: Settings  # model resolved to a folder or preset, api_key and cluster_token set
    replicas: int
    served_model_name: str
    api_key_generated: bool
    cluster_token_generated: bool = False
    demo_mcp_server: bool = False  # run the demo MCP server beside the demo model

    @property
    def world_size(self) -> int:
        """Ray actors (ranks) per replica."""
        return self.settings.tensor_parallel_size * self.settings.expert_parallel_size


def plan_launch(
    settings: Settings,
    replicas: int,
    *,
    demo_model: Path | None,
    demo_name: str,
    demo_mcp_server: bool = False,
) -> LaunchPlan:
    """Resolve the model and the key and check what can be checked before starting anything."""
    if replicas < 1:
        raise LaunchError(f"--replicas must be >= 1, got {replicas}")
    model = settings.model
    if model is None:
        if demo_model is None:
            raise LaunchError("no --model given and no demo model available")
        model, default_name = str(demo_model), demo_name
    else:
        model, default_name = resolve_model(model)
    if "log_format" not in settings.model_fields_set and sys.stderr.isatty():
        settings = settings.model_copy(update={"log_format": "console"})  # the actors' logs too
    generated = settings.api_key is None
    api_key = settings.api_key or SecretStr(new_api_key())
    token_generated = settings.cluster_token is None
    cluster_token = settings.cluster_token or SecretStr(new_cluster_token())
    check_ports(settings)
    resolved = settings.model_copy(
        update={
            "model": model,
            "api_key": api_key,
            "cluster_token": cluster_token,
            "served_model_name": settings.served_model_name or default_name,
        }
    )
    return LaunchPlan(
        resolved,
        replicas,
        resolved.served_model_name or default_name,
        generated,
        cluster_token_generated=token_generated,
        demo_mcp_server=demo_mcp_server,
    )


def new_api_key() -> str:
    """A fresh key for this run (the `sk-` prefix keeps it out of logs: see common.logging)."""
    return "sk-oss-" + secrets.token_urlsafe(24)


def resolve_model(model: str) -> tuple[str, str]:
    """(what the replicas load, the served name). A folder must hold a checkpoint; anything
    that is not a path is a preset name, which the replica checks as it loads."""
    path = Path(model).expanduser()
    looks_like_path = path.exists() or os.sep in model or model.startswith(".")
    if not looks_like_path:
        return model, model
    if not path.is_dir():
        raise LaunchError(f"--model {model}: no such checkpoint folder")
    hf_config = path / "config.json"
    original = path / "original" / "config.json"
    weights_dir = path if hf_config.is_file() else path / "original"
    if not hf_config.is_file() and not original.is_file():
        raise LaunchError(
            f"--model {model}: not a checkpoint folder (no config.json, nor original/config.json)"
        )
    if not any(weights_dir.glob("*.safetensors")):
        raise LaunchError(f"--model {model}: no *.safetensors weights in {weights_dir}")
    return str(path.resolve()), path.resolve().name


def check_ports(settings: Settings) -> None:
    """Refuse at once when a port is taken (gRPC would share one through SO_REUSEPORT)."""
    wanted = {
        "--http-port": settings.http_port,
        "--grpc-port": settings.grpc_port,
        "--link-port": settings.effective_link_port,
    }
    flags = list(wanted)
    for i, flag in enumerate(flags):
        for other in flags[i + 1 :]:
            if wanted[flag] and wanted[flag] == wanted[other]:
                raise LaunchError(f"{flag} and {other} are both {wanted[flag]}")
    for flag, port in wanted.items():
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((settings.host, port))
            except OSError as err:
                raise LaunchError(
                    f"port {port} on {settings.host} is taken ({err.strerror}): "
                    f"stop what uses it or pass {flag} with a free port"
                ) from err


def ray_cpus(plan: LaunchPlan) -> int:
    """The machine's CPUs, or one per rank when more ranks are asked for than there are CPUs."""
    return max(os.cpu_count() or 1, plan.replicas * plan.world_size)


def replica_reservation(plan: LaunchPlan, use_gpu: bool) -> tuple[RankResources, int]:
    """(what one replica's host actor reserves from Ray, its torch threads).

    TP x EP = 1: the actor is the engine, so it holds the replica's GPU (Ray then shows it
    only that device as cuda:0) and one unit of its pool's resource. Larger replicas: the
    rank actors hold GPUs and CPUs in their placement group; the host actor only drives them.
    """
    if plan.world_size > 1:
        return RankResources(num_gpus=0, num_cpus=0), 1
    num_cpus = max(1, ray_cpus(plan) // plan.replicas)
    pool = plan.settings.replica_pool
    return RankResources(
        num_gpus=1 if use_gpu else 0, num_cpus=num_cpus, custom=placement.pool_affinity(pool)
    ), num_cpus


def check_gpu_capacity(plan: LaunchPlan) -> None:
    """Every replica's every rank gets a GPU of its own, or `up` refuses with the numbers."""
    needed = plan.replicas * plan.world_size
    what = f"--replicas {plan.replicas} x {plan.world_size} GPU(s) per replica"
    try:
        placement.check_gpu_capacity(needed, plan.settings.replica_pool, what)
    except PlacementError as err:
        raise LaunchError(str(err)) from err


def one_line(err: BaseException) -> str:
    """The root cause of a Ray task error, on one line."""
    if isinstance(err, RayTaskError) and err.cause is not None:
        err = err.cause
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0] if isinstance(err, RayActorError) else " ".join(text.split())


class _Replica:
    """One replica actor and what the launcher knows of it."""

    def __init__(self, index: int, replica_id: str) -> None:
        self.index = index
        self.replica_id = replica_id
        self.actor: Any = None
        self.started: ReplicaStarted | None = None
        self.restarts = 0


class Launcher:
    def __init__(self, plan: LaunchPlan, console: UpConsole) -> None:
        self.plan = plan
        self.console = console
        self.settings = plan.settings
        self.redis: LocalRedis | None = None
        self._redis_dir: Path | None = None
        self._ray_owned = False
        self._use_gpu = False
        self.router: Any = None  # oss_serve.router.server.RouterServer
        self.http: Any = None  # oss_serve.router.http.server.HttpServer
        self.demo_mcp: DemoMcpServer | None = None
        run_id = uuid.uuid4().hex[:6]
        self.replicas = [_Replica(i, f"up-{run_id}-{i}") for i in range(plan.replicas)]
        self._stop = asyncio.Event()
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []
        self.processes = StartedProcesses()

    # --- the whole run --------------------------------------------------------------------------
    async def run(self) -> int:
        """Start, serve until a signal, stop; 0 after a clean stop, 130 if stopped while starting."""
        try:
            self._start_redis()
            # A Ctrl-C inside ray.init is lost (Ray swaps signal handlers while it starts):
            # hold SIGINT until our handler is in place, then take it (Ray's children block
            # SIGINT anyway). SIGTERM inside ray.init exits through Ray's handler and `finally`.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                self._start_ray()
                self._handle_signals()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            startup = asyncio.create_task(self._start_services())
            stop_waiter = asyncio.create_task(self._stop.wait())
            await asyncio.wait({startup, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not startup.done():
                startup.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await startup
                return 130
            stop_waiter.cancel()
            startup.result()
            self.console.banner(self.endpoints())
            self._watchers = [asyncio.create_task(self._supervise(r)) for r in self.replicas]
            self._watchers.append(asyncio.create_task(self._record_processes()))
            await self._stop.wait()
            return 0
        finally:
            await self.shutdown()

    def _handle_signals(self) -> None:
        """After ray.init (which installs its own SIGTERM handler): both signals stop us."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal)

    def _on_signal(self) -> None:
        if not self._stop.is_set():
            self.console.note("stopping everything (each step has a time limit)")
        self._stop.set()

    async def _start_services(self) -> None:
        await self._start_demo_mcp()
        await self._start_router()
        await self._start_replicas()
        self.processes.snapshot()
        await self._wait_until_routed()

    # --- start-up, in order ------------------------------------------------------------------------
    def _start_redis(self) -> None:
        if self.settings.redis_url is not None:
            self.console.ready("redis", "(--redis-url)")
            return
        self._redis_dir = Path(tempfile.mkdtemp(prefix="oss-serve-up-redis-"))
        try:
            # started before Ray or the router run any thread: see LocalRedis.end_with_parent
            self.redis = LocalRedis(self._redis_dir, end_with_parent=True).start()
        except RuntimeError as err:
            raise LaunchError(str(err)) from err
        if self.redis.pid is not None:
            self.processes.exclude(self.redis.pid)  # stopped last, by LocalRedis.stop
        self.settings = self.settings.model_copy(update={"redis_url": SecretStr(self.redis.url)})
        self.console.ready("redis-server", f"{self.redis.url}  (pid {self.redis.pid})")

    def _start_ray(self) -> None:
        address = self.settings.ray_address or os.environ.get("RAY_ADDRESS")
        common = {"include_dashboard": False, "logging_level": logging.WARNING}
        if ray.is_initialized():
            detail = "(already initialised in this process)"
        elif address:
            ray.init(address=address, **common)  # type: ignore[arg-type]
            detail = f"joined {address}"
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            cpus = ray_cpus(self.plan)
            # "local": a runtime of our own even when a `ray start` cluster runs on this machine
            ray.init(address="local", num_cpus=cpus, namespace="oss-serve-up", **common)  # type: ignore[arg-type]
            self._ray_owned = True
            self.processes.snapshot()
            detail = f"local, {cpus} CPUs"
        self.console.ready("ray runtime", detail)
        self._reserve_gpus()
        self._size_cpu_kv_cache()

    def _reserve_gpus(self) -> None:
        """With GPUs (device cuda, or auto on a cluster that has some): one per rank, checked
        before anything starts, and the engines told to use them (never a silent CPU run)."""
        try:
            self._use_gpu = placement.wants_gpus(self.settings.device)
        except ValueError as err:
            raise LaunchError(str(err)) from err
        if not self._use_gpu:
            return
        check_gpu_capacity(self.plan)
        self.settings = self.settings.model_copy(update={"device": "cuda"})
        gpus = self.plan.replicas * self.plan.world_size
        self.console.note(f"{gpus} GPU(s): one per rank of each replica")

    def _size_cpu_kv_cache(self) -> None:
        settings = self.settings
        if self._use_gpu or "kv_cache_memory" in settings.model_fields_set:
            return
        self.settings = settings.model_copy(update={"kv_cache_memory": CPU_KV_CACHE_BYTES})
        self.console.note(
            f"KV cache {CPU_KV_CACHE_BYTES // 2**20} MiB per replica on CPU "
            "(OSS_SERVE_KV_CACHE_MEMORY=<bytes> to change)"
        )

    async def _start_demo_mcp(self) -> None:
        """The demo MCP server on a loopback port, allow-listed for the router's requests."""
        if not self.plan.demo_mcp_server:
            return
        try:
            self.demo_mcp = await DemoMcpServer().start()
        except OSError as err:
            raise LaunchError(" ".join(str(err).split())) from err
        allowed = [*self.settings.mcp_allowed_urls, self.demo_mcp.url]
        self.settings = self.settings.model_copy(update={"mcp_allowed_urls": allowed})
        self.console.ready("demo MCP server", f"{DEMO_MCP_LABEL} at {self.demo_mcp.url}")

    async def _start_router(self) -> None:
        from oss_serve.router.http.server import start_http_api
        from oss_serve.router.server import RouterServer

        try:
            self.router = RouterServer(self.settings)
            await self.router.start()
            if self.settings.http_api:
                self.http = await start_http_api(self.router, self.settings)
        except OSError as err:
            raise LaunchError(" ".join(str(err).split())) from err
        http = f"HTTP {self.http.url}, " if self.http is not None else ""
        self.console.ready("router", f"{http}gRPC {self.router.address}")

    async def _start_replicas(self) -> None:
        """Start every replica at once; weight bars while they load; the first failure stops all."""
        labels = [f"replica {r.index}" for r in self.replicas]
        with self.console.weight_bars(labels) as bars:
            pending = {self._launch(r): r for r in self.replicas}
            while pending:
                done, _ = await asyncio.wait(list(pending), timeout=PROGRESS_POLL_S)
                for replica in self.replicas:
                    if replica.started is None and replica.actor is not None:
                        with contextlib.suppress(RayActorError, RayTaskError):
                            bars.update(replica.index, *await replica.actor.load_progress.remote())
                for future in done:
                    replica = pending.pop(future)
                    try:
                        replica.started = future.result()
                    except (RayActorError, RayTaskError) as err:
                        raise LaunchError(
                            f"replica {replica.index} failed to start: {one_line(err)}"
                        ) from err
                    self.console.ready(
                        f"replica {replica.index}",
                        f"{replica.replica_id}  (pid {replica.started.pid}, "
                        f"max_model_len {replica.started.max_model_len})",
                    )

    def _launch(self, replica: _Replica) -> asyncio.Future[ReplicaStarted]:
        try:
            resources, threads = replica_reservation(self.plan, self._use_gpu)
        except PlacementError as err:
            raise LaunchError(str(err)) from err
        replica.actor = spawn_replica_host_actor(
            name=replica.replica_id, resources=resources, omp_threads=threads
        )
        settings = self.settings.model_copy(update={"replica_id": replica.replica_id})
        return asyncio.ensure_future(replica.actor.start.remote(settings))

    async def _wait_until_routed(self) -> None:
        try:
            await self.router.wait_for_replicas(len(self.replicas), REPLICAS_VISIBLE_TIMEOUT_S)
        except TimeoutError as err:
            raise LaunchError(f"the router does not see the replicas: {err}") from err

    def endpoints(self) -> Endpoints:
        key = self.settings.api_key
        token = self.settings.cluster_token
        http_url = self.http.url if self.http is not None else "(HTTP API disabled)"
        return Endpoints(
            http_url=http_url,
            grpc_address=self.router.address,
            link_address=self.router.link_address,
            redis_url=self.redis.url if self.redis is not None else "(--redis-url)",
            model=self.plan.served_model_name,
            api_key=key.get_secret_value() if key is not None else None,
            api_key_generated=self.plan.api_key_generated,
            cluster_token=token.get_secret_value()
            if token is not None and self.plan.cluster_token_generated
            else None,
            replicas=len(self.replicas),
            python=_display_path(Path(sys.executable)),
            tools=_tools_line(self.settings, self.demo_mcp),
        )

    # --- while serving ------------------------------------------------------------------------------
    async def _record_processes(self) -> None:
        """Keep the record of started processes current (Ray starts workers as it needs them)."""
        while not self._stopping:
            self.processes.snapshot()
            await asyncio.sleep(PROCESS_SNAPSHOT_INTERVAL_S)

    async def _supervise(self, replica: _Replica) -> None:
        """Restart a replica whose engine or actor died (same id: its requests resume)."""
        while not self._stopping:
            engine_died = False
            try:
                await replica.actor.wait_fatal.remote()
                engine_died, reason = True, "its engine died"
            except (RayActorError, RayTaskError) as err:
                reason = one_line(err)
            if self._stopping:
                return
            log.error("replica died: restarting it", replica_id=replica.replica_id, reason=reason)
            if engine_died:  # the actor lives: let it release its engine (a TP/EP replica's
                # rank actors and placement group) before it goes, or the new one cannot place
                await _bounded(replica.actor.stop.remote(), REPLICA_DRAIN_TIMEOUT_S, "dead replica")
            with contextlib.suppress(Exception):
                ray.kill(replica.actor, no_restart=True)
            release_placement_group(replica.replica_id)
            await asyncio.sleep(RESTART_BACKOFF_S)
            replica.restarts += 1
            try:
                replica.started = await self._launch(replica)
            except (RayActorError, RayTaskError) as err:
                log.error("replica restart failed", replica_id=replica.replica_id, error=str(err))
                self.console.note(f"replica {replica.index} could not restart: {one_line(err)}")
                return
            self.console.ready(f"replica {replica.index} restarted", replica.replica_id)

    # --- shutdown, in reverse order -------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Router stops accepting, replicas drain and stop, Ray shuts down, Redis stops."""
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        self.processes.snapshot()
        if self.http is not None:
            self.console.stopping("the HTTP API (finishing open requests)")
            await _bounded(self.http.stop(), HTTP_STOP_TIMEOUT_S, "HTTP API stop")
            self.http = None
        if self.router is not None:  # gRPC health says NOT_SERVING; links stay up for the drain
            await _bounded(self.router.health.enter_graceful_shutdown(), 5.0, "gRPC health")
        await self._stop_replicas()
        if self.router is not None:
            self.console.stopping("the router")
            await _bounded(self.router.stop(ROUTER_STOP_GRACE_S), 10.0, "router stop")
            self.router = None
        if self.demo_mcp is not None:
            await self.demo_mcp.stop()
            self.demo_mcp = None
        if self._ray_owned:
            self.console.stopping("Ray")
            ray.shutdown()
            self._ray_owned = False
        if ended := self.processes.end_survivors():
            self.console.note(f"ended {len(ended)} process(es) left behind: {', '.join(ended)}")
        if self.redis is not None:
            self.console.stopping("redis-server")
            self.redis.stop()
            self.redis = None
        if self._redis_dir is not None:
            shutil.rmtree(self._redis_dir, ignore_errors=True)
            self._redis_dir = None

    async def _stop_replicas(self) -> None:
        actors = [r.actor for r in self.replicas if r.actor is not None]
        if not actors:
            return
        self.console.stopping(f"{len(actors)} replica(s) (draining)")
        stops = asyncio.gather(*(actor.stop.remote() for actor in actors), return_exceptions=True)
        deadline = time.monotonic() + REPLICA_DRAIN_TIMEOUT_S
        while not stops.done() and time.monotonic() < deadline:
            if self._ray_owned and not self.processes.ray_core_alive():
                # e.g. SIGTERM to the whole process group: the raylet is gone, nothing to drain
                self.console.note("Ray's runtime stopped under us: not waiting for the drain")
                break
            await asyncio.wait({stops}, timeout=PROGRESS_POLL_S)
        if not stops.done():
            stops.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stops
            log.warning("replicas did not finish draining", timeout_s=REPLICA_DRAIN_TIMEOUT_S)
        for replica in self.replicas:
            if replica.actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(replica.actor, no_restart=True)
                replica.actor = None


async def _bounded(awaitable: Any, timeout_s: float, what: str) -> None:
    """Await with a time limit; a failure or a timeout is logged, never raised (shutdown)."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError:
        log.warning("shutdown step timed out", step=what, timeout_s=timeout_s)
    except Exception as err:
        log.warning("shutdown step failed", step=what, error=str(err))
    log.debug("shutdown step done", step=what, seconds=round(time.monotonic() - started, 2))


def release_placement_group(name: str) -> None:
    """Remove a dead TP/EP replica's placement group (named after it), if it left one."""
    try:
        group = get_placement_group(name)
    except ValueError:
        return  # a single-process replica, or already released
    with contextlib.suppress(Exception):
        remove_placement_group(group)
        log.info("released a dead replica's placement group", replica_id=name)


def _display_path(path: Path) -> str:
    """The interpreter path relative to the current folder when inside it (shorter to paste)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _tools_line(settings: Settings, demo_mcp: DemoMcpServer | None = None) -> str:
    """The enabled server-side tools, where the browser searches, the demo MCP server."""
    if not settings.tools:
        return ""
    where = settings.browser_search_url or (
        _display_path(settings.browser_docs_dir) if settings.browser_docs_dir else None
    )
    notes = [f"browser over {where}"] if "browser" in settings.tools and where else []
    if demo_mcp is not None:
        notes.append(f"MCP server_label {DEMO_MCP_LABEL!r}: {demo_mcp.url}")
    return ", ".join(settings.tools) + (f" ({'; '.join(notes)})" if notes else "")
