"""Capacity planning for one deployment: memory per GPU, KV capacity and max concurrency.

Two engines size the KV cache of the same model differently, so the plan names one:

- `vllm` (the default, what published deployments and their start-up logs report): the
  budget of `vllm_memory.py`, derived from vLLM's source and calibrated on its logs;
- `oss-serve`: this project's engine, computed by the very functions its workers size
  their cache with (`oss_serve_memory.py`).

Either way the result reads like vLLM's log: "GPU KV cache size: N tokens" is the usable
blocks divided among the KV groups (full attention, sliding window) times the block size,
and `max_concurrency` is vLLM's "Maximum concurrency for L tokens per request": the
blocks over the most blocks one request of `max_model_len` tokens can hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from oss_serve.benchmarks.engine_memory import EngineMemory, ModelShape, model_shape
from oss_serve.benchmarks.gpu_catalog import (
    GIB,
    MXFP4_BACKENDS,
    GPUSpec,
    WeightsPath,
    weights_path,
)
from oss_serve.benchmarks.oss_serve_memory import oss_serve_memory
from oss_serve.benchmarks.vllm_memory import scheduler_defaults, vllm_memory

__all__ = ["ModelShape", "model_shape", "scheduler_defaults"]

Engine = Literal["vllm", "oss-serve"]
ENGINES: tuple[Engine, ...] = ("vllm", "oss-serve")
FitStatus = Literal["fits", "reduce_max_model_len", "does_not_fit"]


@dataclass(frozen=True)
class PlanOptions:
    """The knobs of `oss-serve plan`; None means "the engine's default for this GPU"."""

    num_gpus: int = 1
    max_model_len: int | None = None  # None = the model's max_position_embeddings
    weights: Literal["mxfp4", "bf16"] = "mxfp4"
    gpu_memory_utilization: float = 0.9
    price_per_hour: float | None = None  # USD per GPU-hour; None = catalog price
    block_size: int = 16
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    enforce_eager: bool = False  # vLLM captures graphs after sizing the cache: no effect
    input_len: int = 1024  # the workload the speed and cost estimates assume
    output_len: int = 1024
    engine: Engine = "vllm"
    moe_backend: str = "auto"  # auto | marlin | triton | flashinfer-trtllm (vLLM's choice)

    def __post_init__(self) -> None:
        if self.num_gpus < 1:
            raise ValueError("num-gpus must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu-memory-utilization must be in (0, 1]")
        if self.weights not in ("mxfp4", "bf16"):
            raise ValueError(f"weights: {self.weights!r} is not mxfp4 or bf16")
        if self.engine not in ENGINES:
            raise ValueError(f"engine: {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.moe_backend != "auto" and self.moe_backend not in MXFP4_BACKENDS:
            raise ValueError(
                f"moe-backend: {self.moe_backend!r} is not auto or one of "
                f"{', '.join(MXFP4_BACKENDS)}"
            )
        for name in ("max_model_len", "max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        if self.input_len < 1 or self.output_len < 1 or self.block_size < 1:
            raise ValueError("input-len, output-len and block-size must be >= 1")


@dataclass
class MemoryPlan:
    """Per-GPU memory budget and KV capacity of one deployment (bytes unless named)."""

    engine: str
    total_bytes_per_gpu: int  # what CUDA reports as the device's total
    usable_bytes_per_gpu: int
    weights_bytes_per_gpu: int
    activation_bytes_per_gpu: int
    non_torch_bytes_per_gpu: int
    cuda_graph_bytes_per_gpu: int
    kv_cache_bytes_per_gpu: int
    kv_bytes_per_token: int  # full-attention layers, whole deployment (all TP ranks)
    kv_bytes_per_token_per_gpu: int
    sliding_kv_bytes_per_request: int  # window-capped sliding layers, whole deployment
    kv_block_bytes_per_gpu: int  # one block id across all layer tensors of a rank
    num_kv_blocks: int
    kv_cache_tokens: int  # vLLM's "GPU KV cache size"
    blocks_per_max_len_request: int
    max_concurrency: float  # vLLM's "Maximum concurrency for max_model_len tokens"
    max_concurrency_workload: float  # same, for input_len + output_len tokens
    max_model_len: int
    max_model_len_that_fits: int
    max_num_batched_tokens: int
    max_num_seqs: int
    kv_cache_dtype: str
    weights_format: str
    moe_backend: str
    weights_path: str
    status: FitStatus
    message: str

    @property
    def fits(self) -> bool:
        return self.status == "fits"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["fits"] = self.fits
        data["max_concurrency"] = round(self.max_concurrency, 2)
        data["max_concurrency_workload"] = round(self.max_concurrency_workload, 2)
        return data


@dataclass(frozen=True)
class KVLayout:
    """Bytes of KV one token costs per layer on one TP rank, and the layer types."""

    full_layers: int
    sliding_layers: int
    bytes_per_token_per_layer: int  # one rank


def kv_layout(config: Any, num_gpus: int, block_size: int, dtype_bytes: int) -> KVLayout:
    if config.num_key_value_heads % num_gpus:
        raise ValueError(
            f"num-gpus {num_gpus} must divide the {config.num_key_value_heads} KV heads"
        )
    from oss_serve.workers.model.attention_metadata import FULL_ATTENTION

    heads_per_gpu = config.num_key_value_heads // num_gpus
    full = sum(1 for t in config.layer_types if t == FULL_ATTENTION)
    return KVLayout(
        full_layers=full,
        sliding_layers=len(config.layer_types) - full,
        bytes_per_token_per_layer=heads_per_gpu * config.head_dim * 2 * dtype_bytes,
    )


def engine_memory(shape: ModelShape, gpu: GPUSpec, options: PlanOptions) -> EngineMemory:
    """The chosen engine's budget of one GPU of the deployment."""
    kv_layout(shape.config, options.num_gpus, options.block_size, 2)  # checks the TP size
    if options.engine == "oss-serve":
        return oss_serve_memory(shape, gpu, options)
    return vllm_memory(shape, gpu, options)


def plan_memory(shape: ModelShape, gpu: GPUSpec, options: PlanOptions) -> MemoryPlan:
    """Where each GPU's memory goes, and how many max-length requests the KV cache holds."""
    config = shape.config
    n = options.num_gpus
    path = weights_path(gpu, options.weights, options.moe_backend)
    memory = engine_memory(shape, gpu, options)
    kv_dtype = memory.kv_cache_dtype
    layout = kv_layout(config, n, options.block_size, 1 if kv_dtype == "fp8" else 2)
    max_len = _max_model_len(config, options)
    blocks = memory.usable_blocks
    max_len_blocks = memory.blocks_for(max_len)
    fitting_len = _longest_fitting_len(memory.blocks_for, blocks, max_len)
    status, message = _fit_status(gpu, memory, max_len, fitting_len, path, options)
    window = min(config.sliding_window, max_len)
    return MemoryPlan(
        engine=memory.engine,
        total_bytes_per_gpu=memory.total_bytes,
        usable_bytes_per_gpu=memory.usable_bytes,
        weights_bytes_per_gpu=memory.weights_bytes,
        activation_bytes_per_gpu=memory.activation_bytes,
        non_torch_bytes_per_gpu=memory.non_torch_bytes,
        cuda_graph_bytes_per_gpu=memory.cuda_graph_bytes,
        kv_cache_bytes_per_gpu=max(0, memory.kv_bytes),
        kv_bytes_per_token=layout.full_layers * layout.bytes_per_token_per_layer * n,
        kv_bytes_per_token_per_gpu=layout.full_layers * layout.bytes_per_token_per_layer,
        sliding_kv_bytes_per_request=layout.sliding_layers
        * layout.bytes_per_token_per_layer
        * n
        * window,
        kv_block_bytes_per_gpu=memory.block_bytes,
        num_kv_blocks=blocks,
        kv_cache_tokens=blocks // memory.num_groups * memory.block_size,
        blocks_per_max_len_request=max_len_blocks,
        max_concurrency=blocks / max_len_blocks,
        max_concurrency_workload=blocks / memory.blocks_for(options.input_len + options.output_len),
        max_model_len=max_len,
        max_model_len_that_fits=fitting_len,
        max_num_batched_tokens=memory.max_num_batched_tokens,
        max_num_seqs=memory.max_num_seqs,
        kv_cache_dtype=kv_dtype,
        weights_format=path.storage_format,
        moe_backend=path.moe_backend if memory.engine == "vllm" else "oss-serve",
        weights_path=path.description
        if memory.engine == "vllm"
        else f"oss-serve kernels, {path.storage_format} experts as in the checkpoint",
        status=status,
        message=message,
    )


def _max_model_len(config: Any, options: PlanOptions) -> int:
    max_len = options.max_model_len or config.max_position_embeddings
    if max_len > config.max_position_embeddings:
        raise ValueError(
            f"max-model-len {max_len} exceeds the model's "
            f"max_position_embeddings ({config.max_position_embeddings})"
        )
    return int(max_len)


def _longest_fitting_len(need: Any, blocks: int, max_len: int) -> int:
    """Binary search, as vLLM's estimate_max_model_len, for the longest request that fits."""
    if need(1) > blocks:
        return 0
    low, high = 1, max_len
    while low < high:
        mid = (low + high + 1) // 2
        if need(mid) <= blocks:
            low = mid
        else:
            high = mid - 1
    return low


def _fit_status(
    gpu: GPUSpec,
    memory: EngineMemory,
    max_len: int,
    fitting_len: int,
    path: WeightsPath,
    options: PlanOptions,
) -> tuple[FitStatus, str]:
    where = f"{options.num_gpus} x {gpu.name}"
    weights, usable = memory.weights_bytes, memory.usable_bytes
    if weights > usable:
        return "does_not_fit", (
            f"does not fit: weights need {weights / GIB:.1f} GiB per GPU ({path.storage_format}) "
            f"but {where} offers {usable / GIB:.1f} GiB at gpu-memory-utilization "
            f"{options.gpu_memory_utilization:g}; use more GPUs or a larger card"
        )
    if memory.kv_bytes <= 0 or fitting_len == 0:
        return "does_not_fit", (
            f"does not fit: after {weights / GIB:.1f} GiB of weights and the runtime reserve "
            f"{where} has no memory left for the KV cache "
            f"({max(0, memory.kv_bytes) / GIB:.2f} GiB)"
        )
    if fitting_len < max_len:
        return "reduce_max_model_len", (
            f"KV cache too small for one {max_len:,}-token request; "
            f"use --max-model-len {fitting_len} or fewer, or more GPUs"
        )
    return "fits", f"fits: {memory.kv_bytes / GIB:.1f} GiB of KV cache per GPU"
