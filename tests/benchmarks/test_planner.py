"""The capacity planner: memory per GPU, KV geometry, vLLM's max concurrency, fit verdicts."""

from __future__ import annotations

import math

import pytest

from oss_serve.benchmarks.capacity import build_deployment, markdown_plan, plan_deployment
from oss_serve.benchmarks.gpu_catalog import CATALOG, GIB, KIB, UnknownGPUError, get_gpu
from oss_serve.benchmarks.planner import PlanOptions, scheduler_defaults
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.model.inspect import parameter_report

pytestmark = pytest.mark.unit

REQUIRED_GPUS = [
    "t4",
    "a2",
    "a10",
    "l4",
    "l40s",
    "rtx2080ti",
    "rtx3080",
    "rtx3090",
    "rtx4090",
    "rtx5090",
    "rtx-a5000",
    "a100-40gb",
    "a100-80gb",
    "h100",
    "h100-pcie",
    "h100-nvl",
    "h200",
    "b200",
]


@pytest.mark.parametrize("gpu", ["h100", "a100-80gb", "h100-pcie"])
def test_20b_on_one_80gb_gpu_has_13_gib_of_weights_and_24_kib_kv_per_token(gpu):
    plan = plan_deployment("gpt-oss-20b", gpu, PlanOptions())
    assert 12.8 <= plan["weights_bytes_per_gpu"] / GIB <= 13.8
    assert plan["kv_bytes_per_token"] == 24 * KIB  # 12 full layers x 8 heads x 64 x K,V x 2 B
    assert plan["status"] == "fits"
    assert plan["max_concurrency"] > 1


def test_weights_come_from_the_parameter_report_not_constants():
    report = parameter_report(PRESETS["gpt-oss-120b"], "mxfp4")
    plan = plan_deployment("gpt-oss-120b", "b200", PlanOptions())
    assert plan["weights_bytes_per_gpu"] == report.total_bytes
    assert plan["total_params"] == report.total_params


def test_tensor_parallel_shards_everything_but_router_and_norms():
    report = parameter_report(PRESETS["gpt-oss-20b"], "mxfp4")
    replicated = report.components["router"].bytes + report.components["norms"].bytes
    for n in (2, 4, 8):
        plan = plan_deployment("gpt-oss-20b", "h100", PlanOptions(num_gpus=n))
        sharded = report.total_bytes - replicated
        assert plan["weights_bytes_per_gpu"] == pytest.approx(sharded / n + replicated, abs=8)
        assert plan["kv_bytes_per_token_per_gpu"] == 24 * KIB // n
        assert plan["kv_bytes_per_token"] == 24 * KIB


def test_kv_capacity_and_max_concurrency_follow_vllm_formulas():
    options = PlanOptions(max_model_len=32768)
    deployment = build_deployment("gpt-oss-20b", "h100", options)
    memory = deployment.memory
    # vLLM: page = 16 tokens x 8 heads x 64 x (K,V) x bf16; 12 layers share each tensor.
    block_bytes = 16 * 8 * 64 * 2 * 2 * 12
    blocks = memory.kv_cache_bytes_per_gpu // block_bytes
    assert memory.num_kv_blocks == blocks
    assert memory.kv_cache_tokens == blocks // 2 * 16  # "GPU KV cache size"
    full = math.ceil(32768 / 16)
    sliding = math.ceil(min(128 - 1 + 8192, 32768) / 16) + 1
    assert memory.blocks_per_max_len_request == full + sliding
    assert memory.max_concurrency == pytest.approx(blocks / (full + sliding))
    # the budget adds up: usable = weights + activation + non-torch + graphs + KV
    parts = (
        memory.weights_bytes_per_gpu
        + memory.activation_bytes_per_gpu
        + memory.non_torch_bytes_per_gpu
        + memory.cuda_graph_bytes_per_gpu
        + memory.kv_cache_bytes_per_gpu
    )
    assert parts == memory.usable_bytes_per_gpu


def test_120b_on_one_24gb_card_says_it_does_not_fit():
    plan = plan_deployment("gpt-oss-120b", "rtx4090", PlanOptions())
    assert plan["status"] == "does_not_fit" and plan["fits"] is False
    assert plan["message"].startswith("does not fit: weights need 60.8 GiB per GPU")
    assert plan["decode"] == [] and plan["usd_per_million_output_tokens"] is None
    assert "does not fit" in markdown_plan(plan)


def test_suggested_max_model_len_is_the_longest_that_fits():
    plan = plan_deployment("gpt-oss-120b", "h100", PlanOptions())
    assert plan["status"] == "reduce_max_model_len"
    suggested = plan["max_model_len_that_fits"]
    assert 0 < suggested < 131072
    assert f"--max-model-len {suggested}" in plan["message"]
    fitting = plan_deployment("gpt-oss-120b", "h100", PlanOptions(max_model_len=suggested))
    assert fitting["status"] == "fits" and fitting["max_concurrency"] >= 1
    one_more = plan_deployment("gpt-oss-120b", "h100", PlanOptions(max_model_len=suggested + 16))
    assert one_more["status"] == "reduce_max_model_len"


def test_every_catalog_gpu_plans_and_renders_for_both_models():
    assert set(REQUIRED_GPUS) <= set(CATALOG)
    for gpu in CATALOG:
        for model in ("gpt-oss-20b", "gpt-oss-120b"):
            plan = plan_deployment(model, gpu, PlanOptions(num_gpus=8))
            assert markdown_plan(plan).startswith(f"## {model} on 8 x {gpu}")
            for key in ("max_concurrency", "kv_cache_tokens", "weights_bytes_per_gpu"):
                assert key in plan


def test_turing_has_no_mxfp4_kernel_so_experts_are_dense_fp16():
    plan = plan_deployment("gpt-oss-20b", "t4", PlanOptions(num_gpus=8))
    assert plan["weights_format"] == "bf16"
    assert "dequantized to fp16" in plan["weights_path"]
    dense = parameter_report(PRESETS["gpt-oss-20b"], "bf16").total_bytes
    assert plan["weights_bytes_per_gpu"] > dense / 8


def test_capability_flags_choose_the_weights_path():
    assert get_gpu("b200").native_fp4 and get_gpu("rtx5090").native_fp4
    assert get_gpu("h100").native_fp8 and not get_gpu("h100").native_fp4
    assert not get_gpu("a100-80gb").native_fp8 and get_gpu("a100-80gb").mxfp4_kernel
    assert "native FP4" in plan_deployment("gpt-oss-20b", "b200", PlanOptions())["weights_path"]
    assert "Marlin" in plan_deployment("gpt-oss-20b", "a100-80gb", PlanOptions())["weights_path"]


def test_catalog_memory_is_what_nvidia_smi_reports():
    assert get_gpu("h100").memory_mib == 81559
    assert get_gpu("rtx4090").memory_mib == 24564
    assert get_gpu("b200").memory_mib == 183359
    assert get_gpu("A100").name == "a100-80gb"
    with pytest.raises(UnknownGPUError, match="h200"):
        get_gpu("v100")


def test_scheduler_defaults_follow_vllm_for_large_and_small_gpus():
    assert scheduler_defaults(get_gpu("h100")) == (8192, 1024)
    assert scheduler_defaults(get_gpu("a100-80gb")) == (2048, 256)  # vLLM excludes A100s
    assert scheduler_defaults(get_gpu("l4")) == (2048, 256)


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="gpu-memory-utilization"):
        PlanOptions(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="weights"):
        PlanOptions(weights="int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="KV heads"):
        plan_deployment("gpt-oss-20b", "h100", PlanOptions(num_gpus=3))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        plan_deployment("gpt-oss-20b", "h100", PlanOptions(max_model_len=200_000))


def test_fp8_kv_cache_halves_kv_bytes_on_gpus_with_fp8():
    bf16 = plan_deployment("gpt-oss-20b", "h100", PlanOptions())
    fp8 = plan_deployment("gpt-oss-20b", "h100", PlanOptions(kv_cache_dtype="fp8"))
    assert fp8["kv_bytes_per_token"] * 2 == bf16["kv_bytes_per_token"]
    assert fp8["kv_cache_tokens"] == pytest.approx(2 * bf16["kv_cache_tokens"], rel=1e-3)
    no_fp8 = plan_deployment("gpt-oss-20b", "a100-80gb", PlanOptions(kv_cache_dtype="fp8"))
    assert no_fp8["kv_cache_dtype"] == "bf16"
