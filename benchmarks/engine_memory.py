"""What the planner's engine models share: the model's counted shape and one GPU's budget.

Each engine model (`vllm_memory.py`, `oss_serve_memory.py`) turns a model, a GPU and the
plan options into an `EngineMemory`: where the memory of one GPU of the tensor-parallel
group goes, and how that engine counts KV blocks and the blocks one request holds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# Component -> sharded across TP ranks (True) or replicated on each (False); the experts
# are handled by each engine (vLLM splits their intermediate dim, oss-serve whole experts).
SHARDED_COMPONENTS = {
    "attention": True,  # heads split; the o_proj bias is replicated but tiny
    "embedding": True,  # vocab-parallel rows
    "unembedding": True,
    "router": False,
    "norms": False,
}


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


def dense_bytes_per_gpu(shape: ModelShape, num_gpus: int) -> int:
    """Everything but the experts on one rank: sharded components split (rounded up)."""
    total = 0
    for component, sharded in SHARDED_COMPONENTS.items():
        nbytes = shape.component_bytes[component]
        total += math.ceil(nbytes / num_gpus) if sharded else nbytes
    return total


@dataclass(frozen=True)
class EngineMemory:
    """One GPU's memory as an engine sizes it, and that engine's KV block accounting."""

    engine: str
    total_bytes: int  # what CUDA reports as the device's total
    usable_bytes: int  # total x gpu_memory_utilization
    weights_bytes: int
    activation_bytes: int  # the peak the engine reserves for a step
    non_torch_bytes: int  # CUDA context, workspaces, collective buffers
    cuda_graph_bytes: int
    kv_bytes: int  # what the engine gives the KV cache (negative: nothing fits)
    kv_cache_dtype: str  # fp8 | bf16 | fp16
    block_bytes: int  # one block id across every layer tensor of a rank
    num_groups: int  # KV groups (full attention, sliding window) sharing the block pool
    block_size: int
    usable_block_offset: int  # blocks of the pool no request can hold (a null block)
    blocks_for: Callable[[int], int]  # blocks one request of N tokens holds at most
    max_num_batched_tokens: int
    max_num_seqs: int

    @property
    def num_blocks(self) -> int:
        return max(0, self.kv_bytes // self.block_bytes)

    @property
    def usable_blocks(self) -> int:
        return max(0, self.num_blocks - self.usable_block_offset)
