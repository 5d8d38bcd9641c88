"""Where each rank of a TP x EP replica sits, and which groups it joins (no processes)."""

from __future__ import annotations

import pytest

from oss_serve.cluster.ray.communication import ReplicaTopology, backend_for
from oss_serve.cluster.ray.placement import RankResources

pytestmark = pytest.mark.unit


def test_tp2_x_ep2_grid_splits_heads_within_a_slice_and_experts_across_slices():
    topology = ReplicaTopology(2, 2)
    assert topology.world_size == 4
    assert [(topology.tp_rank(r), topology.ep_rank(r)) for r in range(4)] == [
        (0, 0), (1, 0), (0, 1), (1, 1),
    ]  # fmt: skip
    assert topology.tp_groups() == [[0, 1], [2, 3]]
    assert topology.ep_groups() == [[0, 2], [1, 3]]
    assert topology.expert_shards == 2


def test_experts_across_all_ranks_reuses_the_tp_ranks_for_expert_parallelism():
    topology = ReplicaTopology(4, 1, experts_across_all_ranks=True)
    assert topology.world_size == 4
    assert topology.tp_groups() == [[0, 1, 2, 3]]
    assert topology.ep_groups() == [[0, 1, 2, 3]]
    assert [topology.ep_rank(r) for r in range(4)] == [0, 1, 2, 3]
    assert topology.expert_shards == 4


def test_ep_only_replica_keeps_whole_attention_on_every_rank():
    topology = ReplicaTopology(1, 2)
    assert topology.tp_groups() == [[0], [1]]
    assert topology.ep_groups() == [[0, 1]]
    assert topology.describe(1) == "rank 1 (tp 0, ep 1)"


def test_bad_sizes_and_ranks_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        ReplicaTopology(0, 1)
    with pytest.raises(ValueError, match=r"rank 4 is outside 0\.\.3"):
        ReplicaTopology(2, 2).tp_rank(4)


def test_nccl_on_cuda_gloo_elsewhere_and_gpu_bundles_hold_one_gpu():
    assert backend_for("cuda") == "nccl"
    assert backend_for("cpu") == "gloo"
    assert RankResources(num_gpus=1, num_cpus=2).bundle() == {"CPU": 2, "GPU": 1.0}
    assert RankResources(num_gpus=0, num_cpus=0.5).bundle() == {"CPU": 0.5}


def test_ray_options_come_from_the_settings_section():
    from oss_serve.cluster.ray.executor import RayEngineOptions
    from oss_serve.common.settings import Settings

    settings = Settings(
        ray_address="auto", ray_placement_strategy="PACK", experts_across_all_ranks=True
    )
    options = RayEngineOptions.from_settings(settings)
    assert (options.ray_address, options.placement_strategy) == ("auto", "PACK")
    assert options.experts_across_all_ranks
