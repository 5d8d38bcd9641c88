"""How this project's engine sizes its KV cache, computed by the functions its workers run.

A worker (`LocalExecutor.available_kv_cache_bytes`) gives the cache the utilization share
of the device minus what is in use when it asks (CUDA context and weights) and a bound on
one step's activations (`workers/runner/memory_budget.py`); the engine core cuts that into
blocks of `KVCacheSpec.bytes_per_block`, keeps block 0 as the null block, and a request of
N tokens holds `admission.blocks_needed(N, ...)` blocks. The plan calls those same
functions with predicted figures instead of measured ones:

- used = the CUDA context + this rank's weights: attention and vocabulary rows split by
  tensor parallelism, the router and norms whole, and every expert in the checkpoint's
  layout (TP does not split experts here; `expert_parallel_size` would);
- activations and scheduler limits are the engine's own defaults (`EngineConfig`) unless
  the options override them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oss_serve.benchmarks.engine_memory import EngineMemory, ModelShape, dense_bytes_per_gpu
from oss_serve.benchmarks.gpu_catalog import MIB, GPUSpec

if TYPE_CHECKING:
    from oss_serve.benchmarks.planner import PlanOptions

CUDA_CONTEXT_BYTES = 512 * MIB  # torch's CUDA context and kernels, in use before the cache


def oss_serve_memory(shape: ModelShape, gpu: GPUSpec, options: PlanOptions) -> EngineMemory:
    """One GPU of `options.num_gpus` x `gpu` as an oss-serve worker budgets it."""
    import torch

    from oss_serve.workers.engine.admission import blocks_needed
    from oss_serve.workers.engine.engine_config import EngineConfig
    from oss_serve.workers.engine.kv_cache_spec import kv_cache_spec_for
    from oss_serve.workers.runner.memory_budget import (
        kv_cache_budget_bytes,
        step_activation_bytes,
    )

    config = shape.config
    n = options.num_gpus
    defaults = EngineConfig()
    batched = options.max_num_batched_tokens or defaults.max_num_batched_tokens
    seqs = options.max_num_seqs or defaults.max_num_seqs
    dtype = torch.bfloat16 if gpu.has_bf16 else torch.float16
    spec = kv_cache_spec_for(config, block_size=options.block_size, dtype=dtype, tp_size=n)
    weights = dense_bytes_per_gpu(shape, n) + shape.component_bytes["experts"]
    activation = step_activation_bytes(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        max_num_batched_tokens=batched,
        max_num_seqs=seqs,
        dtype_bytes=dtype.itemsize,
    )
    total = gpu.cuda_total_bytes
    kv_bytes = kv_cache_budget_bytes(
        total_bytes=total,
        used_bytes=CUDA_CONTEXT_BYTES + weights,
        gpu_memory_utilization=options.gpu_memory_utilization,
        activation_bytes=activation,
    )
    window_blocks = spec.window_blocks
    return EngineMemory(
        engine="oss-serve",
        total_bytes=total,
        usable_bytes=int(total * options.gpu_memory_utilization),
        weights_bytes=weights,
        activation_bytes=activation,
        non_torch_bytes=CUDA_CONTEXT_BYTES,
        cuda_graph_bytes=0,
        kv_bytes=kv_bytes,
        kv_cache_dtype="bf16" if gpu.has_bf16 else "fp16",
        block_bytes=spec.bytes_per_block,
        num_groups=len(spec.groups),
        block_size=spec.block_size,
        usable_block_offset=1,
        blocks_for=lambda tokens: blocks_needed(tokens, spec.block_size, window_blocks),
        max_num_batched_tokens=batched,
        max_num_seqs=seqs,
    )
