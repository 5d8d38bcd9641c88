"""Where a replica's ranks run: one Ray placement group, one bundle per rank.

A bundle is 1 GPU + some CPUs (CPUs only on a CPU replica). STRICT_PACK keeps the whole
replica on one node, where NCCL runs over NVLink/PCIe instead of the network; PACK or
SPREAD let a large replica span nodes. Reserving the bundles first means a replica either
gets all of its GPUs or fails with a clear error, never half-starts.

GPU pools: a node of pool P advertises the custom resource `oss-serve-pool-P` (the Helm
chart's worker group of that pool sets it in `ray start`), and every rank of a replica of
pool P asks for one unit of it, so replicas land only on their pool's nodes. A cluster that
advertises no pool resource at all (`oss-serve up` on one machine) places anywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from oss_serve.common.logging import get_logger

log = get_logger(__name__)

STRATEGIES = ("STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD")
POOL_RESOURCE_PREFIX = "oss-serve-pool-"


class PlacementError(RuntimeError):
    """The Ray cluster cannot hold the replica's bundles (names what was asked and what is free)."""


@dataclass(frozen=True)
class RankResources:
    num_gpus: int  # 0 or 1 per rank
    num_cpus: float
    custom: tuple[tuple[str, float], ...] = ()  # e.g. the pool resource: (("oss-serve-pool-a", 1),)

    def bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.num_cpus, **dict(self.custom)}
        if self.num_gpus:
            bundle["GPU"] = float(self.num_gpus)
        return bundle

    def actor_options(self) -> dict[str, object]:
        """The same reservation as Ray actor options (an actor outside a placement group)."""
        return {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "resources": dict(self.custom),
        }


def connect(address: str | None = None) -> None:
    """Use the Ray runtime this process already has, else join `address` (None: start one)."""
    if ray.is_initialized():
        return
    ray.init(address=address, include_dashboard=False, log_to_driver=True)


def cluster_has_gpus() -> bool:
    return float(ray.cluster_resources().get("GPU", 0)) > 0


def wants_gpus(device: str) -> bool:
    """Whether a replica with this `device` setting reserves GPUs: cuda always, auto when
    the Ray cluster has any, cpu never."""
    if device.startswith("cuda"):
        return True
    if device == "cpu":
        return False
    if device != "auto":
        raise ValueError(f"device must be auto, cpu or cuda for a Ray replica, got {device!r}")
    return cluster_has_gpus()


def pool_resource(pool: str) -> str:
    """The custom resource that the nodes of GPU pool `pool` advertise."""
    return POOL_RESOURCE_PREFIX + pool


def pool_affinity(pool: str | None) -> tuple[tuple[str, float], ...]:
    """What a rank of a replica of `pool` asks for beyond CPUs and GPUs: one unit of the
    pool's resource when the cluster labels its nodes by pool, else nothing."""
    if not pool:
        return ()
    advertised = {n for n in ray.cluster_resources() if n.startswith(POOL_RESOURCE_PREFIX)}
    if not advertised:
        return ()
    wanted = pool_resource(pool)
    if wanted not in advertised:
        pools = ", ".join(sorted(n.removeprefix(POOL_RESOURCE_PREFIX) for n in advertised))
        raise PlacementError(
            f"no node of the Ray cluster is in GPU pool {pool!r} (resource {wanted}); "
            f"its pools: {pools}. Set OSS_SERVE_REPLICA_POOL to one of them"
        )
    return ((wanted, 1.0),)


def gpus_in_pool(pool: str | None) -> int:
    """GPUs on the live nodes of `pool` (every node when the cluster has no pools)."""
    affinity = dict(pool_affinity(pool))
    total = 0.0
    for node in ray.nodes():
        resources = node.get("Resources", {})
        if node.get("Alive") and all(name in resources for name in affinity):
            total += float(resources.get("GPU", 0))
    return int(total)


def check_gpu_capacity(gpus_needed: int, pool: str | None, what: str) -> None:
    """Refuse at once (no waiting) when the pool's nodes have fewer GPUs than asked for."""
    have = gpus_in_pool(pool)
    if gpus_needed > have:
        where = (
            f"GPU pool {pool!r} of the Ray cluster" if pool_affinity(pool) else "the Ray cluster"
        )
        raise PlacementError(
            f"{what} needs {gpus_needed} GPU(s) but {where} has {have}: "
            "add GPUs or lower --replicas / tensor_parallel_size x expert_parallel_size"
        )


def rank_resources(
    world_size: int, use_gpu: bool, cpus_per_rank: float | None, pool: str | None = None
) -> RankResources:
    """1 GPU + 1 CPU per rank by default; on CPU, the free CPUs shared out (at most 1 each).
    With a pool, each rank also asks for one unit of the pool's resource."""
    if cpus_per_rank is None:
        if use_gpu:
            cpus_per_rank = 1.0
        else:
            free_cpus = float(ray.available_resources().get("CPU", 0))
            cpus_per_rank = max(0.01, min(1.0, free_cpus / world_size))
    if cpus_per_rank <= 0:
        raise ValueError(f"cpus_per_rank must be > 0, got {cpus_per_rank}")
    return RankResources(
        num_gpus=1 if use_gpu else 0, num_cpus=cpus_per_rank, custom=pool_affinity(pool)
    )


def reserve(
    world_size: int, resources: RankResources, *, strategy: str, timeout_s: float, name: str = ""
) -> PlacementGroup:
    """Create the replica's placement group and wait until every bundle is reserved."""
    if strategy not in STRATEGIES:
        raise ValueError(f"placement strategy must be one of {', '.join(STRATEGIES)}: {strategy!r}")
    if resources.num_gpus:
        check_gpu_capacity(world_size * resources.num_gpus, _pool_of(resources), "the replica")
    bundles = [resources.bundle() for _ in range(world_size)]
    group = placement_group(bundles, strategy=strategy, name=name)
    started = time.monotonic()
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise PlacementError(
            f"the Ray cluster could not reserve {world_size} bundles of {resources.bundle()} "
            f"({strategy}) within {timeout_s:.0f}s; available: {ray.available_resources()}. "
            "Add nodes/GPUs, lower tensor/expert_parallel_size, or use strategy PACK/SPREAD"
        )
    log.info(
        "placement group ready",
        bundles=world_size,
        bundle=resources.bundle(),
        strategy=strategy,
        wait_s=round(time.monotonic() - started, 2),
    )
    return group


def _pool_of(resources: RankResources) -> str | None:
    for name, _ in resources.custom:
        if name.startswith(POOL_RESOURCE_PREFIX):
            return name.removeprefix(POOL_RESOURCE_PREFIX)
    return None


def bundle_strategy(group: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(
        placement_group=group,
        placement_group_bundle_index=index,
        placement_group_capture_child_tasks=True,
    )


def release(group: PlacementGroup | None) -> None:
    """Remove the placement group (this also ends every actor still placed in it)."""
    if group is None:
        return
    try:
        remove_placement_group(group)
    except Exception as exc:  # already gone, or Ray is shutting down
        log.debug("placement group removal failed", error=str(exc))
