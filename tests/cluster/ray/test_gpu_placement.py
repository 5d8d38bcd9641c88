"""Every rank of every replica holds a GPU of its own, in its own pool, on a Ray cluster of
fake GPU nodes (Ray hands out GPU ids without touching a device, so this runs on a CPU).

The cluster: a head without GPUs, node A (pool "a", 2 GPUs), node B (pool "b", 2 GPUs).
Replica host actors (TP x EP = 1) reserve what `oss-serve up` reserves; TP x EP > 1
replicas reserve a placement group with the executor's bundles.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from oss_serve.cluster.launch.host_actor import spawn_replica_host_actor
from oss_serve.cluster.launch.launcher import (
    LaunchError,
    LaunchPlan,
    check_gpu_capacity,
    replica_reservation,
)
from oss_serve.cluster.ray import placement
from oss_serve.common.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[dict[str, str]]:
    """pool name -> node id of a three-node Ray cluster with fake GPUs."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
    )
    nodes = {
        pool: cluster.add_node(
            num_cpus=2, num_gpus=2, resources={placement.pool_resource(pool): 1000}
        )
        for pool in ("a", "b")
    }
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield {pool: node.node_id for pool, node in nodes.items()}
    ray.shutdown()
    cluster.shutdown()


def plan(replicas: int, pool: str, tp: int = 1) -> LaunchPlan:
    settings = Settings(replica_pool=pool, tensor_parallel_size=tp, http_port=0, grpc_port=0)
    return LaunchPlan(settings, replicas, "m", api_key_generated=False)


@ray.remote(num_cpus=0)
class Probe:
    """Stands in for a rank actor: says where Ray put it."""

    def where(self) -> tuple[str, tuple[str, ...]]:
        return ray.get_runtime_context().get_node_id(), tuple(map(str, ray.get_gpu_ids()))


def test_single_rank_replicas_each_hold_a_distinct_gpu_of_their_pool(gpu_cluster):
    launch = plan(replicas=2, pool="a")
    check_gpu_capacity(launch)
    resources, _ = replica_reservation(launch, use_gpu=True)
    assert resources.bundle() == {"CPU": resources.num_cpus, "GPU": 1.0, "oss-serve-pool-a": 1.0}
    actors = [
        spawn_replica_host_actor(name=f"gpu-placement-{i}", resources=resources, omp_threads=1)
        for i in range(2)
    ]
    try:
        where = ray.get([actor.placement.remote() for actor in actors], timeout=120)
    finally:
        for actor in actors:
            ray.kill(actor)
    assert {node for node, _ in where} == {gpu_cluster["a"]}
    gpu_ids = [ids for _, ids in where]
    assert all(len(ids) == 1 for ids in gpu_ids), gpu_ids
    assert len({ids[0] for ids in gpu_ids}) == 2, f"two replicas share a GPU: {gpu_ids}"


def test_a_third_replica_on_two_gpus_is_refused_with_the_numbers(gpu_cluster):
    with pytest.raises(LaunchError) as err:
        check_gpu_capacity(plan(replicas=3, pool="a"))
    message = str(err.value)
    assert "--replicas 3 x 1 GPU(s) per replica needs 3 GPU(s)" in message
    assert "GPU pool 'a' of the Ray cluster has 2" in message


def test_a_tensor_parallel_replica_places_one_gpu_per_rank_on_its_pool(gpu_cluster):
    resources = placement.rank_resources(2, use_gpu=True, cpus_per_rank=0.5, pool="b")
    group = placement.reserve(2, resources, strategy="STRICT_PACK", timeout_s=60)
    probes: list[Any] = []
    try:
        probes = [
            Probe.options(  # type: ignore[attr-defined]
                **resources.actor_options(), scheduling_strategy=placement.bundle_strategy(group, r)
            ).remote()
            for r in range(2)
        ]
        where = ray.get([p.where.remote() for p in probes], timeout=120)
    finally:
        for probe in probes:
            ray.kill(probe)
        placement.release(group)
    assert {node for node, _ in where} == {gpu_cluster["b"]}
    assert sorted(ids[0] for _, ids in where) == ["0", "1"]


def test_a_replica_larger_than_its_pool_fails_at_once_naming_the_pool(gpu_cluster):
    resources = placement.rank_resources(4, use_gpu=True, cpus_per_rank=0.25, pool="a")
    with pytest.raises(
        placement.PlacementError, match=r"needs 4 GPU\(s\) but GPU pool 'a'.* has 2"
    ):
        placement.reserve(4, resources, strategy="PACK", timeout_s=600)


def test_a_pool_the_cluster_does_not_have_is_refused_naming_the_pools_it_has(gpu_cluster):
    with pytest.raises(placement.PlacementError, match=r"pool 'c'.*its pools: a, b"):
        replica_reservation(plan(replicas=1, pool="c"), use_gpu=True)
