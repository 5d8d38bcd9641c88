"""An adapter's slice for one tensor/expert-parallel rank, cut like the base weights it adapts.

Column-parallel projections (q, k, v: this rank's heads are rows of W) keep A whole and
take B's rows; the row-parallel o_proj takes A's columns and keeps B whole, so each rank's
delta is a partial sum that the attention's all-reduce adds up with the base output.
Experts take the rank's expert range of both A and B.
"""

from __future__ import annotations

from oss_serve.workers.lora.peft_format import LoRAAdapter
from oss_serve.workers.model.config import ModelConfig
from oss_serve.workers.model.parallel import ParallelContext
from oss_serve.workers.model.weights import local_shard


def shard_adapter(
    adapter: LoRAAdapter, config: ModelConfig, parallel: ParallelContext
) -> LoRAAdapter:
    """The part of `adapter` that this rank's weights need (the adapter itself on one rank)."""
    if parallel.is_single:
        return adapter
    weights = {}
    for name, (lora_a, lora_b) in adapter.weights.items():
        dim, shard = local_shard(f"{name}.weight", config, parallel)
        if shard.stop < 0:
            weights[name] = (lora_a, lora_b)
        elif name.endswith(("gate_up_proj", "down_proj")):
            weights[name] = (lora_a[shard.start : shard.stop], lora_b[shard.start : shard.stop])
        elif dim == 0:  # this rank's output rows
            weights[name] = (lora_a, lora_b[shard.start : shard.stop])
        else:  # this rank's input columns
            weights[name] = (lora_a[:, shard.start : shard.stop], lora_b)
    return LoRAAdapter(
        adapter.rank,
        adapter.alpha,
        adapter.use_rslora,
        {name: (a.contiguous(), b.contiguous()) for name, (a, b) in weights.items()},
        adapter.base_model_name_or_path,
    )
