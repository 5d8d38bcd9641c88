"""Where a replica's ranks run: one Ray placement group, one bundle per rank.

A bundle is 1 GPU + some CPUs (CPUs only on a CPU replica). STRICT_PACK keeps the whole
replica on one node, where NCCL runs over NVLink/PCIe instead of the network; PACK or
SPREAD let a large replica span nodes. Reserving the bundles first means a replica either
gets all of its GPUs or fails with a clear error, never half-starts.
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


class PlacementError(RuntimeError):
    """The Ray cluster cannot hold the replica's bundles (names what was asked and what is free)."""


@dataclass(frozen=True)
class RankResources:
    num_gpus: int  # 0 or 1 per rank
    num_cpus: float

    def bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.num_cpus}
        if self.num_gpus:
            bundle["GPU"] = float(self.num_gpus)
        return bundle


def connect(address: str | None = None) -> None:
    """Use the Ray runtime this process already has, else join `address` (None: start one)."""
    if ray.is_initialized():
        return
    ray.init(address=address, include_dashboard=False, log_to_driver=True)


def cluster_has_gpus() -> bool:
    return float(ray.cluster_resources().get("GPU", 0)) > 0


def rank_resources(world_size: int, use_gpu: bool, cpus_per_rank: float | None) -> RankResources:
    """1 GPU + 1 CPU per rank by default; on CPU, the free CPUs shared out (at most 1 each)."""
    if cpus_per_rank is None:
        if use_gpu:
            cpus_per_rank = 1.0
        else:
            free_cpus = float(ray.available_resources().get("CPU", 0))
            cpus_per_rank = max(0.01, min(1.0, free_cpus / world_size))
    if cpus_per_rank <= 0:
        raise ValueError(f"cpus_per_rank must be > 0, got {cpus_per_rank}")
    return RankResources(num_gpus=1 if use_gpu else 0, num_cpus=cpus_per_rank)


def reserve(
    world_size: int, resources: RankResources, *, strategy: str, timeout_s: float, name: str = ""
) -> PlacementGroup:
    """Create the replica's placement group and wait until every bundle is reserved."""
    if strategy not in STRATEGIES:
        raise ValueError(f"placement strategy must be one of {', '.join(STRATEGIES)}: {strategy!r}")
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
