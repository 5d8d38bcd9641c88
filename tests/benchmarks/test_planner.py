"""The capacity planner: memory per GPU, KV geometry, vLLM's max concurrency, fit verdicts."""

from __future__ import annotations

import math

import pytest

from oss_serve.benchmarks.capacity import build_deployment, markdown_plan, plan_deployment
from oss_serve.benchmarks.gpu_catalog import CATALOG, GIB, KIB, UnknownGPUError, get_gpu
from oss_serve.benchmarks.plan_sources import TOLERANCE, check_sources
from oss_serve.benchmarks.planner import PlanOptions, model_shape, scheduler_defaults
from oss_serve.benchmarks.vllm_memory import (
    MODEL_BUFFERS_BYTES,
    expert_bytes_per_gpu,
    padded_expert_dims,
)
from oss_serve.workers.engine.admission import blocks_needed
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.model.inspect import parameter_report
from oss_serve.workers.runner.memory_budget import kv_cache_budget_bytes, step_activation_bytes

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
    assert 13.3 <= plan["weights_bytes_per_gpu"] / GIB <= 13.8
    assert plan["kv_bytes_per_token"] == 24 * KIB  # 12 full layers x 8 heads x 64 x K,V x 2 B
    assert plan["status"] == "fits"
    assert plan["max_concurrency"] > 1


def test_planner_reproduces_every_published_vllm_figure_within_5_percent():
    checks = check_sources()
    assert len(checks) >= 7
    kinds = {check.figure for check in checks}
    assert kinds == {"weights_gib", "available_kv_cache_gib", "max_concurrency"}
    for check in checks:
        assert abs(check.error) <= TOLERANCE, check


def test_dense_parts_come_from_the_parameter_report_and_experts_from_the_kernel_layout():
    report = parameter_report(PRESETS["gpt-oss-120b"], "mxfp4")
    shape = model_shape("gpt-oss-120b", "mxfp4")
    plan = plan_deployment("gpt-oss-120b", "b200", PlanOptions())
    dense = report.total_bytes - report.components["experts"].bytes
    experts = expert_bytes_per_gpu(shape, "flashinfer-trtllm", 1, get_gpu("b200"))
    assert plan["weights_bytes_per_gpu"] == dense + experts + MODEL_BUFFERS_BYTES
    assert experts > report.components["experts"].bytes  # TRT-LLM pads 2880 to 3072
    assert plan["total_params"] == report.total_params


def test_tensor_parallel_splits_dense_parts_and_each_experts_padded_intermediate():
    config = PRESETS["gpt-oss-20b"]
    # Marlin pads the hidden size to 256 and each rank's intermediate size to 128
    assert padded_expert_dims(config, "marlin", 1) == (3072, 2944)
    assert padded_expert_dims(config, "marlin", 2) == (3072, 1536)
    assert padded_expert_dims(config, "marlin", 4) == (3072, 768)
    report = parameter_report(config, "mxfp4")
    replicated = report.components["router"].bytes + report.components["norms"].bytes
    sharded = report.total_bytes - report.components["experts"].bytes - replicated
    shape = model_shape("gpt-oss-20b", "mxfp4")
    for n in (2, 4, 8):
        plan = plan_deployment("gpt-oss-20b", "a10", PlanOptions(num_gpus=n))
        experts = expert_bytes_per_gpu(shape, "marlin", n, get_gpu("a10"))
        expected = sharded / n + replicated + experts + MODEL_BUFFERS_BYTES
        assert plan["weights_bytes_per_gpu"] == pytest.approx(expected, abs=8)
        assert plan["kv_bytes_per_token_per_gpu"] == 24 * KIB // n
        assert plan["kv_bytes_per_token"] == 24 * KIB
    # the sampler sees the whole vocabulary on every rank: activations barely shrink
    one = plan_deployment("gpt-oss-20b", "a10", PlanOptions(num_gpus=1))
    four = plan_deployment("gpt-oss-20b", "a10", PlanOptions(num_gpus=4))
    assert four["activation_bytes_per_gpu"] > 0.9 * one["activation_bytes_per_gpu"]


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
    assert memory.cuda_graph_bytes_per_gpu == 0  # captured after the cache is sized


def test_oss_serve_engine_is_sized_by_the_workers_own_budget_functions():
    options = PlanOptions(engine="oss-serve", max_model_len=65536)
    deployment = build_deployment("gpt-oss-20b", "l40s", options)
    memory = deployment.memory
    config = PRESETS["gpt-oss-20b"]
    activation = step_activation_bytes(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        max_num_batched_tokens=2048,
        max_num_seqs=256,
        dtype_bytes=2,
    )
    assert memory.activation_bytes_per_gpu == activation
    budget = kv_cache_budget_bytes(
        total_bytes=memory.total_bytes_per_gpu,
        used_bytes=memory.non_torch_bytes_per_gpu + memory.weights_bytes_per_gpu,
        gpu_memory_utilization=0.9,
        activation_bytes=activation,
    )
    assert memory.kv_cache_bytes_per_gpu == budget
    usable_blocks = budget // memory.kv_block_bytes_per_gpu - 1  # block 0 is the null block
    needed = blocks_needed(65536, 16, (0, math.ceil(127 / 16)))
    assert memory.blocks_per_max_len_request == needed == 65536 // 16 + 9
    assert memory.max_concurrency == pytest.approx(usable_blocks / needed)
    assert memory.engine == "oss-serve" and memory.moe_backend == "oss-serve"


def test_oss_serve_keeps_every_expert_on_each_tensor_parallel_rank():
    vllm = plan_deployment("gpt-oss-20b", "a100-80gb", PlanOptions(num_gpus=4))
    ours = plan_deployment("gpt-oss-20b", "a100-80gb", PlanOptions(num_gpus=4, engine="oss-serve"))
    experts = parameter_report(PRESETS["gpt-oss-20b"], "mxfp4").components["experts"].bytes
    assert ours["weights_bytes_per_gpu"] > experts > vllm["weights_bytes_per_gpu"]


def test_120b_on_one_24gb_card_says_it_does_not_fit():
    plan = plan_deployment("gpt-oss-120b", "rtx4090", PlanOptions())
    assert plan["status"] == "does_not_fit" and plan["fits"] is False
    assert plan["message"].startswith("does not fit: weights need 65.9 GiB per GPU")
    assert plan["decode"] == [] and plan["usd_per_million_output_tokens"] is None
    assert "does not fit" in markdown_plan(plan)


def test_120b_on_one_h100_at_defaults_has_no_kv_left_as_vllm_reports():
    plan = plan_deployment("gpt-oss-120b", "h100", PlanOptions())
    assert plan["status"] == "does_not_fit"  # vLLM: "No available memory for the cache"


def test_suggested_max_model_len_is_the_longest_that_fits():
    base = {"gpu_memory_utilization": 0.95, "max_num_batched_tokens": 1024}
    plan = plan_deployment("gpt-oss-120b", "h100", PlanOptions(**base))
    assert plan["status"] == "reduce_max_model_len"
    suggested = plan["max_model_len_that_fits"]
    assert 0 < suggested < 131072
    assert f"--max-model-len {suggested}" in plan["message"]
    options = PlanOptions(max_model_len=suggested, **base)
    fitting = plan_deployment("gpt-oss-120b", "h100", options)
    assert fitting["status"] == "fits" and fitting["max_concurrency"] >= 1
    one_more = PlanOptions(max_model_len=suggested + 16, **base)
    assert plan_deployment("gpt-oss-120b", "h100", one_more)["status"] == "reduce_max_model_len"


def test_every_catalog_gpu_plans_and_renders_for_both_models():
    assert set(REQUIRED_GPUS) <= set(CATALOG)
    for gpu in CATALOG:
        for model in ("gpt-oss-20b", "gpt-oss-120b"):
            plan = plan_deployment(model, gpu, PlanOptions(num_gpus=8))
            assert markdown_plan(plan).startswith(f"## {model} on 8 x {gpu}")
            for key in ("max_concurrency", "kv_cache_tokens", "weights_bytes_per_gpu"):
                assert key in plan


@pytest.mark.parametrize("num_gpus", [2, 4])
def test_turing_serves_mxfp4_experts_in_marlin_with_fp16_activations(num_gpus):
    plan = plan_deployment("gpt-oss-20b", "t4", PlanOptions(num_gpus=num_gpus))
    assert plan["status"] == "fits" and plan["max_concurrency"] > 1
    assert plan["weights_format"] == "mxfp4" and plan["moe_backend"] == "marlin"
    assert "fp16 activations" in plan["weights_path"]
    assert plan["kv_cache_dtype"] == "fp16"


def test_compute_capability_chooses_vllms_moe_kernel():
    expected = {
        "t4": "marlin",
        "a10": "marlin",
        "a100-80gb": "marlin",
        "l4": "marlin",
        "rtx5090": "marlin",
        "h100": "triton",
        "h200": "triton",
        "b200": "flashinfer-trtllm",
    }
    for gpu, backend in expected.items():
        assert get_gpu(gpu).moe_backend == backend
        assert plan_deployment("gpt-oss-20b", gpu, PlanOptions())["moe_backend"] == backend
    forced = plan_deployment("gpt-oss-20b", "h100", PlanOptions(moe_backend="marlin"))
    assert forced["moe_backend"] == "marlin"
    assert forced["weights_bytes_per_gpu"] / GIB == pytest.approx(13.72, abs=0.02)


def test_catalog_memory_is_what_nvidia_smi_reports():
    assert get_gpu("h100").memory_mib == 81559
    assert get_gpu("rtx4090").memory_mib == 24564
    assert get_gpu("b200").memory_mib == 183359
    assert get_gpu("A100").name == "a100-80gb"
    # vLLM multiplies what CUDA reports, a little less than nvidia-smi's total
    assert get_gpu("t4").cuda_total_bytes / GIB == pytest.approx(14.56, abs=0.01)
    assert get_gpu("h100").cuda_total_bytes / GIB == pytest.approx(79.11, abs=0.01)
    assert get_gpu("l4").cuda_total_bytes == (23034 - 512) * (1 << 20)
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
    with pytest.raises(ValueError, match="engine"):
        PlanOptions(engine="sglang")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="moe-backend"):
        PlanOptions(moe_backend="cutlass")
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
