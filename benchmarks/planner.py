"""Capacity planning for one deployment: memory per GPU, KV capacity and max concurrency.

Modelled on how vLLM (v1) sizes its KV cache, so that the numbers read like its logs:

- usable memory = total x `gpu_memory_utilization` (vLLM's "requested memory"), with the
  total being what CUDA reports (`cudaMemGetInfo`), a little below `nvidia-smi`;
- minus weights per GPU (from `parameter_report` in the chosen format, sharded by TP),
  the profiling peak (a forward pass of `max_num_batched_tokens` tokens, or the sampler
  over `max_num_seqs` x vocabulary logits, whichever is larger), non-torch memory (NCCL,
  cuBLAS workspaces) and CUDA graphs (which newer vLLM counts before sizing the cache);
- the rest is KV cache. gpt-oss has one sliding-window and one full-attention group of
  equal size; as in vLLM's hybrid allocator, layer i of both groups shares one tensor, so
  a block costs `block_size x kv_heads x head_dim x 2 x dtype` bytes times the layers
  per group, whichever group holds it (`kv_cache_spec.py` of the engine does the same).
- "GPU KV cache size: N tokens" = blocks // groups x block_size, and "Maximum concurrency
  for L tokens per request" = blocks / (blocks one request of L tokens needs: L tokens
  of full attention + min(window - 1 + max_num_batched_tokens, L) of sliding window + 1).

Where this differs from vLLM: it estimates what vLLM measures (peak activation, non-torch
memory, CUDA graphs) from shapes, and counts weights in the checkpoint's layout, while
vLLM's MXFP4 kernels pad expert dimensions (2880 -> 3072), so vLLM reports ~4 GiB more
for gpt-oss-120b.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from oss_serve.benchmarks.gpu_catalog import GIB, MIB, GPUSpec, WeightsPath, weights_path

# cudaMemGetInfo reports 250-900 MiB less than nvidia-smi's memory.total (driver and
# ECC reservations); one value for all cards.
DRIVER_RESERVED_BYTES = 512 * MIB
# Bytes per sampler logit at the profiling peak: bf16 logits, fp32 copy, sorted values,
# int64 sort indices, softmax, cumulative sum and masks of top-k/top-p (vLLM profiles
# the sampler with top-k/top-p on `max_num_seqs` rows of the full vocabulary).
SAMPLER_BYTES_PER_LOGIT = 32
NON_TORCH_BYTES = 300 * MIB  # cuBLAS/cuDNN workspaces, allocator slack
NCCL_BYTES = 512 * MIB  # NCCL buffers and custom all-reduce IPC buffers when TP > 1
CUDA_GRAPH_BYTES = 1 * GIB  # vLLM logs 0.3-1.5 GiB of graph pools for models this size
# Component -> sharded across TP ranks (True) or replicated on each (False).
SHARDED_COMPONENTS = {
    "attention": True,  # heads split; the o_proj bias is replicated but tiny
    "experts": True,  # TP splits the expert intermediate dim (EP would split experts)
    "embedding": True,  # vocab-parallel rows
    "unembedding": True,
    "router": False,
    "norms": False,
}

FitStatus = Literal["fits", "reduce_max_model_len", "does_not_fit"]


@dataclass(frozen=True)
class PlanOptions:
    """The knobs of `oss-serve plan`; None means "vLLM's default for this GPU"."""

    num_gpus: int = 1
    max_model_len: int | None = None  # None = the model's max_position_embeddings
    weights: Literal["mxfp4", "bf16"] = "mxfp4"
    gpu_memory_utilization: float = 0.9
    price_per_hour: float | None = None  # USD per GPU-hour; None = catalog price
    block_size: int = 16
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    enforce_eager: bool = False
    input_len: int = 1024  # the workload the speed and cost estimates assume
    output_len: int = 1024

    def __post_init__(self) -> None:
        if self.num_gpus < 1:
            raise ValueError("num-gpus must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu-memory-utilization must be in (0, 1]")
        if self.weights not in ("mxfp4", "bf16"):
            raise ValueError(f"weights: {self.weights!r} is not mxfp4 or bf16")
        for name in ("max_model_len", "max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        if self.input_len < 1 or self.output_len < 1 or self.block_size < 1:
            raise ValueError("input-len, output-len and block-size must be >= 1")


def scheduler_defaults(gpu: GPUSpec) -> tuple[int, int]:
    """vLLM's API-server defaults (max_num_batched_tokens, max_num_seqs) for this GPU.

    vLLM's `get_batch_defaults`: devices with >= 70 GiB that are not A100s get 8192 / 1024,
    everything else 2048 / 256.
    """
    if gpu.memory_bytes >= 70 * GIB and not gpu.name.startswith("a100"):
        return 8192, 1024
    return 2048, 256


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a model: its config and per-component bytes and params."""

    name: str
    config: Any  # oss_serve.workers.model.config.ModelConfig
    component_params: dict[str, int]
    component_bytes: dict[str, int]
    active_params: int


@functools.cache
def model_shape(model: str, storage_format: Literal["mxfp4", "bf16"]) -> ModelShape:
    """Counts from `oss-serve inspect` (parameter_report on the meta device), cached."""
    from oss_serve.workers.model.config import load_config
    from oss_serve.workers.model.inspect import parameter_report

    config = load_config(model if not Path(model).exists() else Path(model))
    report = parameter_report(config, storage_format, model=model)
    return ModelShape(
        name=model,
        config=config,
        component_params={k: c.params for k, c in report.components.items()},
        component_bytes={k: c.bytes for k, c in report.components.items()},
        active_params=report.active_params,
    )


@dataclass
class MemoryPlan:
    """Per-GPU memory budget and KV capacity of one deployment (bytes unless named)."""

    total_bytes_per_gpu: int
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


def weights_bytes_per_gpu(shape: ModelShape, num_gpus: int) -> int:
    """Sharded components split across ranks (rounded up), replicated ones whole."""
    total = 0
    for component, nbytes in shape.component_bytes.items():
        sharded = SHARDED_COMPONENTS.get(component, False)
        total += math.ceil(nbytes / num_gpus) if sharded else nbytes
    return total


def activation_peak_bytes(config: Any, num_gpus: int, batched_tokens: int, num_seqs: int) -> int:
    """The larger of a forward pass over `batched_tokens` and the sampler over `num_seqs` rows."""
    hidden = config.hidden_size
    q_size = config.num_attention_heads * config.head_dim
    kv_size = config.num_key_value_heads * config.head_dim
    top_k = config.num_experts_per_tok
    inter = config.intermediate_size
    # Live elements per token at the MoE, the widest point: residual + normed input,
    # q/k/v and attention output, then per chosen expert gate_up (2x inter), the
    # activation (inter) and the expert output (hidden).
    per_token = 2 * hidden + (2 * q_size + 2 * kv_size) / num_gpus
    per_token += top_k * (3 * inter / num_gpus + hidden)
    forward = batched_tokens * per_token * 2  # bf16
    sampler = batched_tokens * hidden * 2 + num_seqs * config.vocab_size * SAMPLER_BYTES_PER_LOGIT
    return int(max(forward, sampler))


@dataclass(frozen=True)
class KVLayout:
    """Block geometry of the KV cache on one TP rank."""

    page_bytes: int  # one block of one layer
    layers_per_group: int
    num_groups: int
    full_layers: int
    sliding_layers: int
    bytes_per_token_per_layer: int  # one rank

    @property
    def block_bytes(self) -> int:
        return self.page_bytes * self.layers_per_group


def kv_layout(config: Any, num_gpus: int, block_size: int, dtype_bytes: int) -> KVLayout:
    if config.num_key_value_heads % num_gpus:
        raise ValueError(
            f"num-gpus {num_gpus} must divide the {config.num_key_value_heads} KV heads"
        )
    from oss_serve.workers.model.attention_metadata import FULL_ATTENTION

    heads_per_gpu = config.num_key_value_heads // num_gpus
    per_token_layer = heads_per_gpu * config.head_dim * 2 * dtype_bytes  # K and V
    full = sum(1 for t in config.layer_types if t == FULL_ATTENTION)
    sliding = len(config.layer_types) - full
    groups = [n for n in (full, sliding) if n]
    return KVLayout(
        page_bytes=block_size * per_token_layer,
        layers_per_group=max(groups),
        num_groups=len(groups),
        full_layers=full,
        sliding_layers=sliding,
        bytes_per_token_per_layer=per_token_layer,
    )


def blocks_per_request(
    layout: KVLayout, tokens: int, window: int, batched_tokens: int, block_size: int
) -> int:
    """Blocks one request of `tokens` holds at most (vLLM's max_memory_usage_bytes / page)."""
    blocks = math.ceil(tokens / block_size) if layout.full_layers else 0
    if layout.sliding_layers:
        held = min(window - 1 + batched_tokens, tokens)
        blocks += math.ceil(held / block_size) + 1  # the window may straddle a block edge
    return blocks


def plan_memory(shape: ModelShape, gpu: GPUSpec, options: PlanOptions) -> MemoryPlan:
    """Where each GPU's memory goes, and how many max-length requests the KV cache holds."""
    config = shape.config
    n = options.num_gpus
    path = weights_path(gpu, options.weights)
    default_tokens, default_seqs = scheduler_defaults(gpu)
    batched = options.max_num_batched_tokens or default_tokens
    seqs = options.max_num_seqs or default_seqs
    max_len = _max_model_len(config, options)
    fp8_kv = options.kv_cache_dtype == "fp8" and gpu.native_fp8
    layout = kv_layout(config, n, options.block_size, 1 if fp8_kv else 2)
    total = gpu.memory_bytes - DRIVER_RESERVED_BYTES
    usable = int(total * options.gpu_memory_utilization)
    weights = weights_bytes_per_gpu(shape, n)
    activation = activation_peak_bytes(config, n, batched, seqs)
    non_torch = NON_TORCH_BYTES + (NCCL_BYTES if n > 1 else 0)
    graphs = 0 if options.enforce_eager else CUDA_GRAPH_BYTES
    kv_bytes = usable - weights - activation - non_torch - graphs
    blocks = max(0, kv_bytes // layout.block_bytes)
    window = config.sliding_window

    def need(tokens: int) -> int:
        return blocks_per_request(layout, tokens, window, batched, options.block_size)

    max_len_blocks = need(max_len)
    fitting_len = _longest_fitting_len(need, blocks, max_len)
    status, message = _fit_status(
        gpu, n, usable, weights, kv_bytes, max_len, fitting_len, path, options
    )
    return MemoryPlan(
        total_bytes_per_gpu=total,
        usable_bytes_per_gpu=usable,
        weights_bytes_per_gpu=weights,
        activation_bytes_per_gpu=activation,
        non_torch_bytes_per_gpu=non_torch,
        cuda_graph_bytes_per_gpu=graphs,
        kv_cache_bytes_per_gpu=max(0, kv_bytes),
        kv_bytes_per_token=layout.full_layers * layout.bytes_per_token_per_layer * n,
        kv_bytes_per_token_per_gpu=layout.full_layers * layout.bytes_per_token_per_layer,
        sliding_kv_bytes_per_request=layout.sliding_layers
        * layout.bytes_per_token_per_layer
        * n
        * min(window, max_len),
        kv_block_bytes_per_gpu=layout.block_bytes,
        num_kv_blocks=blocks,
        kv_cache_tokens=blocks // layout.num_groups * options.block_size,
        blocks_per_max_len_request=max_len_blocks,
        max_concurrency=blocks / max_len_blocks,
        max_concurrency_workload=blocks / need(options.input_len + options.output_len),
        max_model_len=max_len,
        max_model_len_that_fits=fitting_len,
        max_num_batched_tokens=batched,
        max_num_seqs=seqs,
        kv_cache_dtype="fp8" if fp8_kv else "bf16",
        weights_format=path.storage_format,
        weights_path=path.description,
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
    num_gpus: int,
    usable: int,
    weights: int,
    kv_bytes: int,
    max_len: int,
    fitting_len: int,
    path: WeightsPath,
    options: PlanOptions,
) -> tuple[FitStatus, str]:
    where = f"{num_gpus} x {gpu.name}"
    if weights > usable:
        return "does_not_fit", (
            f"does not fit: weights need {weights / GIB:.1f} GiB per GPU ({path.storage_format}) "
            f"but {where} offers {usable / GIB:.1f} GiB at gpu-memory-utilization "
            f"{options.gpu_memory_utilization:g}; use more GPUs or a larger card"
        )
    if kv_bytes <= 0:
        return "does_not_fit", (
            f"does not fit: after {weights / GIB:.1f} GiB of weights and the runtime reserve "
            f"{where} has no memory left for the KV cache ({kv_bytes / GIB:.2f} GiB)"
        )
    if fitting_len < max_len:
        return "reduce_max_model_len", (
            f"KV cache too small for one {max_len:,}-token request; "
            f"use --max-model-len {fitting_len} or fewer, or more GPUs"
        )
    return "fits", f"fits: {kv_bytes / GIB:.1f} GiB of KV cache per GPU"
