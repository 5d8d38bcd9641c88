"""Which slice of the model this process holds, and the collectives that join the slices.

Tensor parallel (TP) splits attention heads and the vocabulary rows of the embedding and
unembedding; expert parallel (EP) splits the experts. Activations stay replicated on every
rank: attention and MoE produce partial sums that `all_reduce` / `expert_all_reduce` add up.
The default context is one process: every collective is a no-op. The cluster plugs real
torch.distributed groups in (NCCL on GPUs, gloo on CPU) or overrides the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ShardRange:
    """Rows [start, stop) of `total` that one rank holds, in a tensor of `capacity` rows."""

    start: int
    stop: int
    total: int
    capacity: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def even_shard(total: int, parts: int, rank: int, what: str) -> ShardRange:
    """Split `total` items into `parts` equal runs (refuses an uneven split, naming `what`)."""
    if parts < 1 or not 0 <= rank < parts:
        raise ValueError(f"{what}: rank {rank} is outside 0..{parts - 1}")
    if total % parts:
        raise ValueError(f"{what} ({total}) is not divisible by the parallel size {parts}")
    size = total // parts
    return ShardRange(rank * size, (rank + 1) * size, total, size)


def padded_shard(total: int, parts: int, rank: int) -> ShardRange:
    """Split `total` rows into `parts` runs of ceil(total/parts); the last run may be short.

    Every rank allocates `ceil(total/parts)` rows (the missing ones stay zero), so that an
    all_gather of equal-sized pieces followed by [:total] rebuilds the whole.
    """
    size = -(-total // parts)
    start = min(rank * size, total)
    return ShardRange(start, min(start + size, total), total, size)


@dataclass
class ParallelContext:
    """This rank's place in the replica; groups=None means the default world group."""

    tp_rank: int = 0
    tp_size: int = 1
    ep_rank: int = 0
    ep_size: int = 1
    tp_group: Any = None  # torch.distributed.ProcessGroup | None
    ep_group: Any = None

    def __post_init__(self) -> None:
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tp_rank {self.tp_rank} outside 0..{self.tp_size - 1}")
        if not 0 <= self.ep_rank < self.ep_size:
            raise ValueError(f"ep_rank {self.ep_rank} outside 0..{self.ep_size - 1}")

    @property
    def is_single(self) -> bool:
        return self.tp_size == 1 and self.ep_size == 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum partial results over the TP group (attention output, vocab-parallel embedding)."""
        if self.tp_size == 1:
            return tensor
        dist.all_reduce(tensor, group=self.tp_group)
        return tensor

    def expert_all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum the MoE partial outputs of the experts each EP rank holds."""
        if self.ep_size == 1:
            return tensor
        dist.all_reduce(tensor, group=self.ep_group)
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """Concatenate equal-sized pieces from every TP rank along `dim` (logits over vocab)."""
        if self.tp_size == 1:
            return tensor
        pieces = [torch.empty_like(tensor) for _ in range(self.tp_size)]
        dist.all_gather(pieces, tensor.contiguous(), group=self.tp_group)
        return torch.cat(pieces, dim=dim)

    # --- what this rank holds ----------------------------------------------------------------
    def kv_heads(self, num_key_value_heads: int) -> ShardRange:
        return even_shard(num_key_value_heads, self.tp_size, self.tp_rank, "num_key_value_heads")

    def q_heads(self, num_attention_heads: int) -> ShardRange:
        return even_shard(num_attention_heads, self.tp_size, self.tp_rank, "num_attention_heads")

    def experts(self, num_local_experts: int) -> ShardRange:
        return even_shard(num_local_experts, self.ep_size, self.ep_rank, "num_local_experts")

    def vocab(self, vocab_size: int) -> ShardRange:
        return padded_shard(vocab_size, self.tp_size, self.tp_rank)


SINGLE_PROCESS = ParallelContext()
