"""The shape of the paged KV cache: layer groups, block size, bytes per block.

gpt-oss alternates sliding-window (128) and full-attention layers. Each group gets its own
block table, but both draw block ids from one pool, and layer j of every group shares
memory with layer j of the others (a physical block belongs to one group at a time, as in
vLLM's hybrid allocator). So the cache is `num_layer_tensors` tensors of
`[2, num_blocks, block_size, kv_heads, head_dim]`, and a block costs the same whichever
group holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from oss_serve.workers.model.attention_metadata import FULL_ATTENTION, SLIDING_ATTENTION


@dataclass(frozen=True)
class KVGroupSpec:
    name: str  # FULL_ATTENTION or SLIDING_ATTENTION
    layer_indices: tuple[int, ...]
    sliding_window: int | None = None  # query i sees keys i - window < j <= i

    @property
    def is_sliding(self) -> bool:
        return self.sliding_window is not None


@dataclass(frozen=True)
class KVCacheSpec:
    block_size: int
    groups: tuple[KVGroupSpec, ...]
    num_kv_heads: int  # per rank
    head_dim: int
    dtype: torch.dtype

    @property
    def num_layer_tensors(self) -> int:
        return max(len(group.layer_indices) for group in self.groups)

    @property
    def num_layers(self) -> int:
        return sum(len(group.layer_indices) for group in self.groups)

    @property
    def bytes_per_block(self) -> int:
        """Bytes one block id costs across every layer tensor (K and V)."""
        per_layer = 2 * self.block_size * self.num_kv_heads * self.head_dim * self.dtype.itemsize
        return per_layer * self.num_layer_tensors

    @property
    def primary_group(self) -> int:
        """The group whose blocks identify a cached prefix (full attention when present)."""
        for index, group in enumerate(self.groups):
            if not group.is_sliding:
                return index
        return 0

    def layer_tensor_index(self) -> list[int]:
        """For each model layer, the index of the cache tensor it uses (its rank in its group)."""
        mapping = [0] * self.num_layers
        for group in self.groups:
            for rank, layer in enumerate(group.layer_indices):
                mapping[layer] = rank
        return mapping

    @property
    def window_blocks(self) -> tuple[int, ...]:
        """Per group, the blocks a sliding window must keep before a position (0 = full
        attention, which keeps them all); a request holds at most this + 1 such blocks."""
        return tuple(
            -(-(group.sliding_window - 1) // self.block_size) if group.sliding_window else 0
            for group in self.groups
        )

    def num_blocks_for_budget(self, budget_bytes: int) -> int:
        return max(0, budget_bytes // self.bytes_per_block)


def kv_cache_spec_for(
    model_config: Any, *, block_size: int, dtype: torch.dtype, tp_size: int = 1
) -> KVCacheSpec:
    """Group a model config's layers by attention type (sliding layers need a window)."""
    num_layers = int(model_config.num_hidden_layers)
    window = getattr(model_config, "sliding_window", None)
    layer_types = list(getattr(model_config, "layer_types", None) or [FULL_ATTENTION] * num_layers)
    if len(layer_types) != num_layers:
        raise ValueError(f"layer_types has {len(layer_types)} entries for {num_layers} layers")
    full = tuple(i for i, kind in enumerate(layer_types) if kind != SLIDING_ATTENTION or not window)
    sliding = tuple(i for i, kind in enumerate(layer_types) if kind == SLIDING_ATTENTION and window)
    groups = []
    if full:
        groups.append(KVGroupSpec(FULL_ATTENTION, full))
    if sliding:
        groups.append(KVGroupSpec(SLIDING_ATTENTION, sliding, sliding_window=int(window or 0)))
    kv_heads = int(model_config.num_key_value_heads)
    if kv_heads % tp_size:
        raise ValueError(f"num_key_value_heads={kv_heads} is not divisible by tp_size={tp_size}")
    return KVCacheSpec(
        block_size=block_size,
        groups=tuple(groups),
        num_kv_heads=kv_heads // tp_size,
        head_dim=int(model_config.head_dim),
        dtype=dtype,
    )
