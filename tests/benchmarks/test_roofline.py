"""The speed model: memory-bound decode, expert coverage, TP communication, cost arithmetic."""

from __future__ import annotations

import pytest

from oss_serve.benchmarks import roofline
from oss_serve.benchmarks.capacity import batch_sizes, build_deployment, plan_deployment
from oss_serve.benchmarks.planner import PlanOptions

pytestmark = pytest.mark.unit


def test_batch1_decode_reads_dense_weights_active_experts_and_kv():
    deployment = build_deployment("gpt-oss-20b", "h100", PlanOptions())
    bytes_ = deployment.shape.component_bytes
    dense = bytes_["attention"] + bytes_["unembedding"] + bytes_["router"] + bytes_["norms"]
    experts = bytes_["experts"] * 4 / 32  # top-4 of 32 experts in every layer
    context = 1000
    kv = (12 * context + 12 * 128) * 8 * 64 * 2 * 2
    step = deployment.speed.decode_step(1, context)
    bandwidth = deployment.gpu.bandwidth_bytes_per_s * roofline.HBM_EFFICIENCY
    assert step.bound == "memory"
    assert step.memory_s == pytest.approx((dense + experts + kv) / bandwidth, rel=1e-9)
    assert step.comm_s == 0.0
    assert step.total_s == pytest.approx(
        step.memory_s + 24 * roofline.LAYER_OVERHEAD_S + roofline.SEQUENCE_OVERHEAD_S
    )
    # DESIGN.md: ~3.7 GB per token for 20b at batch 1
    assert 3.5e9 < dense + experts < 3.9e9


def test_a_large_batch_touches_every_expert():
    speed = build_deployment("gpt-oss-120b", "h100", PlanOptions(num_gpus=8)).speed
    assert speed.experts_touched(1) == pytest.approx(4)
    assert speed.experts_touched(4096) == pytest.approx(128, rel=1e-6)


def test_throughput_grows_and_per_sequence_speed_falls_with_batch():
    plan = plan_deployment("gpt-oss-20b", "h100", PlanOptions(max_model_len=8192))
    rows = plan["decode"]
    assert [r["batch"] for r in rows][:4] == [1, 2, 4, 8]
    throughput = [r["output_tokens_per_s"] for r in rows]
    per_seq = [r["per_sequence_tokens_per_s"] for r in rows]
    assert throughput == sorted(throughput)
    assert per_seq == sorted(per_seq, reverse=True)


def test_tensor_parallel_pays_for_all_reduces_over_the_link():
    nvlink = build_deployment("gpt-oss-120b", "h100", PlanOptions(num_gpus=4)).speed
    pcie = build_deployment("gpt-oss-120b", "h100-pcie", PlanOptions(num_gpus=4)).speed
    assert 0 < nvlink.decode_step(64, 2000).comm_s < pcie.decode_step(64, 2000).comm_s


def test_cost_per_million_tokens_is_price_over_throughput():
    options = PlanOptions(num_gpus=2, price_per_hour=3.0, max_model_len=16384)
    plan = plan_deployment("gpt-oss-20b", "l40s", options)
    assert plan["usd_per_hour"] == 6.0
    for row in plan["decode"]:
        expected = 6.0 / 3600 / row["output_tokens_per_s"] * 1e6
        assert row["usd_per_million_output_tokens"] == pytest.approx(expected, rel=1e-3)
    cheapest = min(r["usd_per_million_output_tokens"] for r in plan["decode"])
    assert plan["usd_per_million_output_tokens"] == cheapest


def test_batch_sizes_are_powers_of_two_and_the_limit():
    assert batch_sizes(1) == [1]
    assert batch_sizes(10) == [1, 2, 4, 8, 10]
    assert batch_sizes(0) == []
