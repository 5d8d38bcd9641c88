"""What a forward pass needs to know about the batch: the contract between engine and model.

The model takes a flat batch of tokens (no padding): `input_ids[N]` and `positions[N]`, where
sequence b owns tokens `query_start_loc[b]:query_start_loc[b+1]`. The engine's model runner
builds this object; the model and the attention kernels only read it.

KV cache: one tensor per layer, shaped `[2, num_blocks, block_size, num_kv_heads, head_dim]`
(K then V). Layers come in two groups, named by the config's `layer_types`:
"full_attention" and "sliding_attention"; each group has its own block table and slot
mapping, so sliding layers can hold only the blocks their window still sees (entries outside
the window may point at any block: kernels never read keys older than the window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


@dataclass
class KVGroupMetadata:
    """Where one layer group's keys and values live in the paged cache."""

    block_table: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32 physical block ids
    slot_mapping: (
        torch.Tensor
    )  # [num_tokens] int64 = block_id * block_size + offset; -1 = don't store


@dataclass
class AttentionMetadata:
    """Per-sequence layout of a flat batch; `groups` is empty when running without a KV cache."""

    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, cumulative query lengths
    seq_lens: torch.Tensor  # [num_seqs] int32, KV length after this step (cached + new tokens)
    max_query_len: int
    max_seq_len: int
    block_size: int = 16
    groups: dict[str, KVGroupMetadata] = field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return int(self.seq_lens.shape[0])

    @classmethod
    def for_full_sequences(
        cls, seq_lens: Sequence[int], device: torch.device | str = "cpu"
    ) -> AttentionMetadata:
        """Whole sequences, no cache (training, parity tests): every query sees its own prefix."""
        lens = torch.tensor(list(seq_lens), dtype=torch.int32, device=device)
        starts = torch.zeros(len(seq_lens) + 1, dtype=torch.int32, device=device)
        starts[1:] = torch.cumsum(lens, 0)
        longest = max(seq_lens, default=0)
        return cls(
            query_start_loc=starts, seq_lens=lens, max_query_len=longest, max_seq_len=longest
        )
