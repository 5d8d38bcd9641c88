"""`oss-serve plan` for one deployment: memory, max concurrency, speed and cost in one object.

The JSON keys are snake_case and flat for the headline numbers (`max_concurrency`,
`kv_cache_tokens`, `kv_bytes_per_token`, `weights_bytes_per_gpu`, ...), with the decode
table under `decode` and the assumptions of the speed model under `assumptions`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from oss_serve.benchmarks import oss_serve_memory, roofline, vllm_memory
from oss_serve.benchmarks.gpu_catalog import GIB, KIB, GPUSpec, get_gpu, weights_path
from oss_serve.benchmarks.planner import (
    MemoryPlan,
    ModelShape,
    PlanOptions,
    kv_layout,
    model_shape,
    plan_memory,
)
from oss_serve.benchmarks.roofline import Roofline


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to `max_batch`, and `max_batch` itself."""
    sizes, batch = [], 1
    while batch < max_batch:
        sizes.append(batch)
        batch *= 2
    if max_batch >= 1:
        sizes.append(max_batch)
    return sizes


def usd_per_million(usd_per_hour_total: float, tokens_per_s: float) -> float | None:
    if tokens_per_s <= 0:
        return None
    return usd_per_hour_total / 3600.0 / tokens_per_s * 1e6


def decode_row(
    model: Roofline,
    memory: MemoryPlan,
    options: PlanOptions,
    usd_per_hour_total: float,
    batch: int,
) -> dict[str, Any]:
    """Step time, per-sequence and aggregate tokens/s, amortized TPOT and $/M at one batch.

    Aggregate throughput counts the prefill of the requests being served: B requests of
    input_len + output_len take output_len decode steps plus B prefills, chunked at
    max_num_batched_tokens.
    """
    context = options.input_len + options.output_len / 2
    step = model.decode_step(batch, context)
    chunk = min(memory.max_num_batched_tokens, batch * options.input_len)
    prefill_per_token_s = model.prefill(chunk).total_s / chunk
    cycle_s = options.output_len * step.total_s + batch * options.input_len * prefill_per_token_s
    output_tps = batch * options.output_len / cycle_s
    return {
        "batch": batch,
        "step_ms": round(step.total_s * 1e3, 3),
        "bound": step.bound,
        "per_sequence_tokens_per_s": round(1.0 / step.total_s, 1),
        "tpot_ms": round(cycle_s / options.output_len * 1e3, 3),
        "output_tokens_per_s": round(output_tps, 1),
        "usd_per_million_output_tokens": _round(usd_per_million(usd_per_hour_total, output_tps)),
    }


def decode_table(
    model: Roofline, memory: MemoryPlan, options: PlanOptions, usd_per_hour_total: float
) -> list[dict[str, Any]]:
    """`decode_row` for batch sizes 1, 2, 4, ... up to what the KV cache and max_num_seqs allow."""
    max_batch = min(memory.max_num_seqs, int(memory.max_concurrency_workload))
    return [
        decode_row(model, memory, options, usd_per_hour_total, batch)
        for batch in batch_sizes(max_batch)
    ]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class Deployment:
    """The memory plan and speed model of one (model, GPU, count, options)."""

    model: str
    gpu: GPUSpec
    options: PlanOptions
    shape: ModelShape
    memory: MemoryPlan
    speed: Roofline
    usd_per_hour_total: float

    def at_batch(self, batch: int) -> dict[str, Any]:
        return decode_row(self.speed, self.memory, self.options, self.usd_per_hour_total, batch)


def build_deployment(model: str, gpu_name: str | GPUSpec, options: PlanOptions) -> Deployment:
    gpu = gpu_name if isinstance(gpu_name, GPUSpec) else get_gpu(gpu_name)
    path = weights_path(gpu, options.weights, options.moe_backend)
    shape = model_shape(model, path.storage_format)
    memory = plan_memory(shape, gpu, options)
    usd_per_gpu_hour = (
        options.price_per_hour if options.price_per_hour is not None else gpu.usd_per_hour
    )
    kv_dtype_bytes = 1 if memory.kv_cache_dtype == "fp8" else 2
    layout = kv_layout(shape.config, options.num_gpus, options.block_size, kv_dtype_bytes)
    speed = Roofline(shape, gpu, options.num_gpus, path, layout.bytes_per_token_per_layer)
    return Deployment(
        model, gpu, options, shape, memory, speed, usd_per_gpu_hour * options.num_gpus
    )


def plan_deployment(model: str, gpu_name: str | GPUSpec, options: PlanOptions) -> dict[str, Any]:
    """The full plan of `options.num_gpus` x `gpu_name` serving `model` (one TP group)."""
    deployment = build_deployment(model, gpu_name, options)
    gpu, shape, memory, speed = (
        deployment.gpu,
        deployment.shape,
        deployment.memory,
        deployment.speed,
    )
    usd_per_hour_total = deployment.usd_per_hour_total
    servable = memory.status != "does_not_fit" and memory.max_concurrency_workload >= 1
    decode = decode_table(speed, memory, options, usd_per_hour_total) if servable else []
    chunk = memory.max_num_batched_tokens
    prefill_step = speed.prefill(chunk)
    best = min(
        (row for row in decode if row["usd_per_million_output_tokens"] is not None),
        key=lambda row: row["usd_per_million_output_tokens"],
        default=None,
    )
    return {
        "model": model,
        "gpu": gpu.name,
        "num_gpus": options.num_gpus,
        "total_params": sum(shape.component_params.values()),
        "active_params": shape.active_params,
        **memory.to_json(),
        "batch1_tokens_per_s": round(1.0 / speed.decode_step(1, options.input_len).total_s, 1),
        "prefill_tokens_per_s": round(chunk / prefill_step.total_s, 1),
        "ttft_ms_unloaded": round(speed.prefill_s(options.input_len, chunk) * 1e3, 3),
        "usd_per_hour": round(usd_per_hour_total, 4),
        "usd_per_million_output_tokens": best["usd_per_million_output_tokens"] if best else None,
        "best_batch": best["batch"] if best else None,
        "output_tokens_per_s_at_best": best["output_tokens_per_s"] if best else None,
        "decode": decode,
        "options": asdict(options),
        "gpu_spec": gpu.to_json(),
        "assumptions": {
            "hbm_efficiency": roofline.HBM_EFFICIENCY,
            "matmul_efficiency": roofline.MATMUL_EFFICIENCY,
            "layer_overhead_us": roofline.LAYER_OVERHEAD_S * 1e6,
            "memory": _memory_assumptions(options),
            "price_source": "--price-per-hour" if options.price_per_hour is not None else "catalog",
            "workload_tokens": {"input": options.input_len, "output": options.output_len},
        },
    }


def _memory_assumptions(options: PlanOptions) -> dict[str, Any]:
    """The engine model's constants, printed with every plan."""
    mib = 1 << 20
    if options.engine == "oss-serve":
        return {"cuda_context_mib": oss_serve_memory.CUDA_CONTEXT_BYTES / mib}
    return {
        "sampler_bytes_per_logit": vllm_memory.SAMPLER_BYTES_PER_LOGIT,
        "non_torch_mib": vllm_memory.NON_TORCH_BYTES / mib,
        "tp_collective_mib": vllm_memory.TP_COLLECTIVE_BYTES / mib,
        "model_buffers_mib": vllm_memory.MODEL_BUFFERS_BYTES / mib,
        "cuda_graphs": "captured after the KV cache is sized (vLLM < 0.21)",
    }


def _gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def markdown_plan(plan: dict[str, Any]) -> str:
    """The human-readable plan: memory budget, KV capacity, then the decode table."""
    lines = [
        f"## {plan['model']} on {plan['num_gpus']} x {plan['gpu']} "
        f"({plan['gpu_spec']['description']})",
        "",
        f"**{plan['message']}**",
        "",
        f"Engine: {plan['engine']}. Weights path: {plan['weights_path']}.",
        "",
        "| per GPU | |",
        "| --- | ---: |",
        f"| memory (CUDA total) | {_gib(plan['total_bytes_per_gpu'])} |",
        f"| usable at utilization {plan['options']['gpu_memory_utilization']:g} "
        f"| {_gib(plan['usable_bytes_per_gpu'])} |",
        f"| weights ({plan['weights_format']}) | {_gib(plan['weights_bytes_per_gpu'])} |",
        f"| activation peak (profile forward + sampler) "
        f"| {_gib(plan['activation_bytes_per_gpu'])} |",
        f"| non-torch (context, workspaces, NCCL) | {_gib(plan['non_torch_bytes_per_gpu'])} |",
        f"| CUDA graphs | {_gib(plan['cuda_graph_bytes_per_gpu'])} |",
        f"| KV cache | {_gib(plan['kv_cache_bytes_per_gpu'])} |",
        "",
        f"KV per token (full-attention layers, whole deployment): "
        f"{plan['kv_bytes_per_token'] / KIB:g} KiB; sliding layers hold at most "
        f"{plan['sliding_kv_bytes_per_request'] / KIB:g} KiB per request. "
        f"GPU KV cache size: {plan['kv_cache_tokens']:,} tokens "
        f"({plan['num_kv_blocks']:,} blocks). Maximum concurrency for "
        f"{plan['max_model_len']:,} tokens per request: {plan['max_concurrency']:.2f}x; "
        f"for {plan['options']['input_len'] + plan['options']['output_len']:,}-token requests: "
        f"{plan['max_concurrency_workload']:.2f}x.",
    ]
    if plan["decode"]:
        lines += [
            "",
            f"Speed (roofline, {plan['options']['input_len']} in / "
            f"{plan['options']['output_len']} out): batch-1 decode "
            f"{plan['batch1_tokens_per_s']:,.0f} tok/s, prefill "
            f"{plan['prefill_tokens_per_s']:,.0f} tok/s, unloaded TTFT "
            f"{plan['ttft_ms_unloaded']:,.1f} ms; ${plan['usd_per_hour']:.2f}/h.",
            "",
            "| batch | step ms | bound | tok/s per seq | TPOT ms | output tok/s | $ / M output |",
            "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for row in plan["decode"]:
            cost = row["usd_per_million_output_tokens"]
            lines.append(
                f"| {row['batch']} | {row['step_ms']:.2f} | {row['bound']} "
                f"| {row['per_sequence_tokens_per_s']:,.0f} | {row['tpot_ms']:.2f} "
                f"| {row['output_tokens_per_s']:,.0f} | {'–' if cost is None else f'{cost:.3f}'} |"
            )
    return "\n".join(lines) + "\n"
