"""One model replica hosted in a Ray actor, for `oss-serve up`.

The actor runs exactly what `oss-serve replica` runs (cluster/replica/host.py): the
engine (single-process for TP = EP = 1, else a RayEngine whose ranks are actors of
their own) behind ReplicaService on the Redis queue. The launcher drives it: `start`,
`load_progress` while it loads (the weight bars), `wait_fatal` to notice an engine that
died, `stop` to drain. It is an async actor, so those calls are answered while the
model loads in a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray

from oss_serve.cluster.ray.placement import RankResources
from oss_serve.cluster.replica.host import ReplicaHost, start_replica_host
from oss_serve.common.logging import configure_logging, get_logger
from oss_serve.common.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class ReplicaStarted:
    """What a started replica tells the launcher."""

    replica_id: str
    pid: int
    max_model_len: int
    gpu_ids: tuple[str, ...] = ()  # the GPU this actor holds (TP x EP = 1 on GPUs)


class ReplicaHostActor:
    """Hosts one replica; all methods run on the actor's event loop."""

    def __init__(self) -> None:
        self._host: ReplicaHost | None = None
        self._weights_bytes = (0, 0)

    def _on_load_progress(self, done_bytes: int, total_bytes: int) -> None:
        self._weights_bytes = (done_bytes, total_bytes)

    async def start(self, settings: Settings) -> ReplicaStarted:
        """Load the engine, register in Redis, start pulling requests."""
        configure_logging(settings.log_level, settings.log_format)
        if threads := os.environ.get("OMP_NUM_THREADS"):
            import torch

            torch.set_num_threads(max(1, int(threads)))
        self._host = await start_replica_host(settings, load_progress=self._on_load_progress)
        return ReplicaStarted(
            replica_id=self._host.replica_id,
            pid=os.getpid(),
            max_model_len=self._host.service.config.max_model_len,
            gpu_ids=self.placement()[1],
        )

    def placement(self) -> tuple[str, tuple[str, ...]]:
        """(Ray node id, GPU ids) of this actor: where its engine runs when TP x EP = 1."""
        context = ray.get_runtime_context()
        return context.get_node_id(), tuple(str(i) for i in ray.get_gpu_ids())

    def load_progress(self) -> tuple[int, int]:
        """(done_bytes, total_bytes) of the weights read so far; (0, 0) before the first."""
        return self._weights_bytes

    async def wait_fatal(self) -> str:
        """Returns when the engine died (the launcher then replaces this replica)."""
        if self._host is None:
            raise RuntimeError("the replica has not started")
        await self._host.service.fatal.wait()
        return self._host.replica_id

    async def stop(self) -> None:
        """Drain and stop (idempotent)."""
        host, self._host = self._host, None
        if host is not None:
            await host.stop()


def spawn_replica_host_actor(*, name: str, resources: RankResources, omp_threads: int) -> Any:
    """A ReplicaHostActor holding `resources` (its GPU and pool with TP x EP = 1); its torch
    uses `omp_threads` threads.

    max_concurrency lets `load_progress` and `wait_fatal` run beside a long `start`.
    """
    actor_class = ray.remote(ReplicaHostActor)
    return actor_class.options(
        name=name,
        **resources.actor_options(),
        max_restarts=0,
        max_concurrency=16,
        runtime_env={
            "env_vars": {
                "OMP_NUM_THREADS": str(omp_threads),
                # a TP/EP replica's executor waits on its ranks with ray.get in worker threads
                # (asyncio.to_thread), which is fine; Ray warns about any blocking get here
                "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0",
            }
        },
    ).remote()
