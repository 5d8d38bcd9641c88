"""How vLLM sizes its KV cache for gpt-oss, term by term: what `oss-serve plan` predicts.

Read from vLLM's v1 engine (`Worker.determine_available_memory`, `kv_cache_utils`,
`fused_moe/oracle/mxfp4.py`) and calibrated on its start-up logs, which
`benchmarks/data/vllm_gpt_oss_logs.json` lists with their links (the tests check that
these figures come out within 5 %):

- requested = what CUDA reports as the device's total x `gpu_memory_utilization`;
- KV cache = requested - weights - profile peak - non-torch growth. The profile run is a
  forward pass of `max_num_batched_tokens` tokens, then the sampler over `max_num_seqs`
  rows of the whole vocabulary (top-k/top-p sorts them); the MoE kernels keep their
  per-token workspaces from the forward while the sampler runs, so the two add up.
- CUDA graphs are captured after the cache is sized, inside the (1 - utilization)
  headroom, so they cost the cache nothing (vLLM 0.21+ estimates them first instead:
  about 0.2-0.6 GiB for this model, reported in its log).
- weights: the dense parts in bf16, the experts in MXFP4 laid out for the MoE kernel the
  compute capability selects (`gpu_catalog.weights_path`), each of which pads the expert
  matrices differently: gpt-oss-20b takes 13.72 GiB in Marlin's layout against 12.8 GiB
  in the checkpoint.
- tensor parallelism splits attention heads, vocabulary rows and each expert's
  intermediate dim (padded again per rank); the router, norms, the sampler (its logits are
  gathered whole on every rank) and the non-torch growth stay whole on each GPU.
- KV: gpt-oss's 12 full-attention and 12 sliding-window layers form two groups whose
  layer i shares one tensor; "Maximum concurrency for L tokens per request" is the block
  count over the blocks one request of L tokens can hold in each group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from oss_serve.benchmarks.engine_memory import EngineMemory, ModelShape, dense_bytes_per_gpu
from oss_serve.benchmarks.gpu_catalog import GIB, MIB, GPUSpec, MoEBackend, weights_path

if TYPE_CHECKING:
    from oss_serve.benchmarks.planner import PlanOptions

ACTIVATION_BYTES = 2  # bf16 (fp16 on Turing) activations
MXFP4_BLOCK = 32  # values per e8m0 scale
# Bytes per logit at the sampler's peak: bf16 logits, the fp32 copy, the top-k/top-p sort
# (fp32 values + int64 indices), softmax/cumsum, the scattered result and the masks.
SAMPLER_BYTES_PER_LOGIT = 32
NON_TORCH_BYTES = 96 * MIB  # CUDA context growth while profiling (kernels, cuBLAS)
# Collective workspaces first touched by the profile forward (TP > 1). NCCL's communicator
# buffers are allocated before vLLM's start-up memory snapshot (`Worker.init_device`), so
# they come out of the (1 - utilization) headroom, not the cache.
TP_COLLECTIVE_BYTES = 64 * MIB
# Rotary cos/sin cache and kernel scratch buffers: the gap between the weights counted here
# and vLLM's "Model loading took" (13.72 vs 13.67 GiB for 20b, 65.97 vs 65.90 for 120b).
MODEL_BUFFERS_BYTES = 48 * MIB


@dataclass(frozen=True)
class ExpertLayout:
    """How one MoE kernel stores a rank's MXFP4 experts (vLLM pads the shapes per kernel)."""

    hidden_multiple: int  # the hidden size is rounded up to this
    intermediate_multiple: int  # each rank's intermediate size is rounded up to this
    reduction_multiple: int  # the weights' reduction dim padded again (Hopper swizzle)
    bias_bytes: int


EXPERT_LAYOUTS: dict[MoEBackend, ExpertLayout] = {
    # Marlin needs n % 256 and k % 128: intermediate to 128, hidden to 256 (2880 -> 3072).
    "marlin": ExpertLayout(256, 128, 1, 2),
    # Triton rounds the intermediate to 64 and keeps fp32 biases; on Hopper its value layout
    # pads each weight's reduction dim to 256 (elsewhere the layout is strided, unpadded).
    "triton": ExpertLayout(1, 64, 256, 4),
    # TRT-LLM pads both to 256 and keeps fp32 biases.
    "flashinfer-trtllm": ExpertLayout(256, 256, 1, 4),
}


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def padded_expert_dims(config: Any, backend: MoEBackend, num_gpus: int) -> tuple[int, int]:
    """(hidden, intermediate per rank) of the experts as the kernel stores them."""
    hidden, inter = config.hidden_size, math.ceil(config.intermediate_size / num_gpus)
    if backend == "dense":
        return hidden, inter
    layout = EXPERT_LAYOUTS[backend]
    return _round_up(hidden, layout.hidden_multiple), _round_up(inter, layout.intermediate_multiple)


def expert_bytes_per_gpu(
    shape: ModelShape, backend: MoEBackend, num_gpus: int, gpu: GPUSpec
) -> int:
    """One rank's experts: gate_up [2I, H] and down [H, I] with scales and biases."""
    if backend == "dense":
        return math.ceil(shape.component_bytes["experts"] / num_gpus)
    config = shape.config
    layout = EXPERT_LAYOUTS[backend]
    hidden, inter = padded_expert_dims(config, backend, num_gpus)
    hopper_swizzle = backend != "triton" or gpu.compute_capability == (9, 0)
    reduction = layout.reduction_multiple if hopper_swizzle else 1
    k_gate_up = _round_up(hidden, reduction)
    k_down = _round_up(inter, reduction)
    gate_up = 2 * inter * (k_gate_up // 2 + hidden // MXFP4_BLOCK + layout.bias_bytes)
    down = hidden * (k_down // 2 + inter // MXFP4_BLOCK + layout.bias_bytes)
    return config.num_hidden_layers * config.num_local_experts * (gate_up + down)


def weights_bytes_per_gpu(
    shape: ModelShape, backend: MoEBackend, num_gpus: int, gpu: GPUSpec
) -> int:
    """What vLLM's "Model loading took" reports on each rank."""
    experts = expert_bytes_per_gpu(shape, backend, num_gpus, gpu)
    return dense_bytes_per_gpu(shape, num_gpus) + experts + MODEL_BUFFERS_BYTES


def forward_bytes_per_token(config: Any, backend: MoEBackend, num_gpus: int) -> int:
    """Activation bytes one token of the profile forward holds at the MoE, the widest point:
    residual and normed input, q/k/v and attention output (this rank's heads), and per
    chosen expert the permuted input, gate_up output, its activation and the down output."""
    hidden, inter = padded_expert_dims(config, backend, num_gpus)
    q = config.num_attention_heads * config.head_dim // num_gpus
    kv = config.num_key_value_heads * config.head_dim // num_gpus
    attention = 2 * config.hidden_size + 2 * q + 2 * kv
    moe = config.num_experts_per_tok * (3 * inter + 2 * hidden)
    return (attention + moe) * ACTIVATION_BYTES


def scheduler_defaults(gpu: GPUSpec) -> tuple[int, int]:
    """vLLM's API-server defaults (max_num_batched_tokens, max_num_seqs) for this GPU.

    `get_batch_defaults`: a device whose CUDA total is >= 70 GiB and that is not an A100
    gets 8192 / 1024, every other one 2048 / 256.
    """
    if gpu.cuda_total_bytes >= 70 * GIB and not gpu.name.startswith("a100"):
        return 8192, 1024
    return 2048, 256


def _kv_groups(config: Any) -> tuple[int, list[int]]:
    """vLLM's hybrid grouping: (layers per group, window of each group or 0 for full).

    Layers of each attention type are cut into groups of the smallest type's size; layer i
    of every group shares one tensor, so a block costs `layers per group` pages.
    """
    from oss_serve.workers.model.attention_metadata import FULL_ATTENTION

    types = list(config.layer_types)
    full = sum(1 for t in types if t == FULL_ATTENTION)
    sliding = len(types) - full
    counts = {0: full, config.sliding_window: sliding}
    counts = {window: n for window, n in counts.items() if n}
    group_size = min(counts.values())
    windows = [w for w, n in counts.items() for _ in range(math.ceil(n / group_size))]
    return group_size, windows


def vllm_memory(shape: ModelShape, gpu: GPUSpec, options: PlanOptions) -> EngineMemory:
    """One GPU of `options.num_gpus` x `gpu` as vLLM budgets it for `shape`."""
    config = shape.config
    n = options.num_gpus
    backend = weights_path(gpu, options.weights, options.moe_backend).moe_backend
    default_tokens, default_seqs = scheduler_defaults(gpu)
    batched = options.max_num_batched_tokens or default_tokens
    seqs = options.max_num_seqs or default_seqs
    fp8_kv = options.kv_cache_dtype == "fp8" and gpu.native_fp8
    kv_dtype = "fp8" if fp8_kv else "bf16" if gpu.has_bf16 else "fp16"
    total = gpu.cuda_total_bytes
    forward = batched * forward_bytes_per_token(config, backend, n)
    sampler = min(seqs, batched) * config.vocab_size * SAMPLER_BYTES_PER_LOGIT
    group_size, windows = _kv_groups(config)
    page_values = options.block_size * (config.num_key_value_heads // n) * config.head_dim * 2
    block_size = options.block_size

    def blocks_for(tokens: int) -> int:
        blocks = 0
        for window in windows:
            held = min(window - 1 + batched, tokens) if window else tokens
            blocks += math.ceil(held / block_size) + (1 if window else 0)
        return blocks

    usable = int(total * options.gpu_memory_utilization)
    weights = weights_bytes_per_gpu(shape, backend, n, gpu)
    non_torch = NON_TORCH_BYTES + (TP_COLLECTIVE_BYTES if n > 1 else 0)
    return EngineMemory(
        engine="vllm",
        total_bytes=total,
        usable_bytes=usable,
        weights_bytes=weights,
        activation_bytes=forward + sampler,
        non_torch_bytes=non_torch,
        cuda_graph_bytes=0,
        kv_bytes=usable - weights - forward - sampler - non_torch,
        kv_cache_dtype=kv_dtype,
        block_bytes=page_values * (1 if fp8_kv else 2) * group_size,
        num_groups=len(windows),
        block_size=block_size,
        usable_block_offset=0,
        blocks_for=blocks_for,
        max_num_batched_tokens=batched,
        max_num_seqs=seqs,
    )
