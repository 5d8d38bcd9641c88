"""Batched LoRA: one flat batch whose tokens use different adapters (or none), in one call.

Adapters sit in device slots: one projection's slots are stacked as A [S, R, in] and
B [S, out, R] (ranks below R padded with zeros) with a scale per slot (alpha / r).
`token_slots[n]` says which slot token n uses, -1 for the base model; then

    y[n] += scale[s] * (x[n] @ A[s]^T) @ B[s]^T     for s = token_slots[n] >= 0

The torch reference groups the tokens by slot and runs two matmuls per adapter present
(the form used on CPU); the Triton kernel (CUDA) does the same per token row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backend import use_triton


@dataclass(frozen=True)
class LoRAWeights:
    """One projection's adapters in device slots (a [slots, ...] view of the stacks)."""

    lora_a: torch.Tensor  # [S, R, in]
    lora_b: torch.Tensor  # [S, out, R]
    scales: torch.Tensor  # [S] float32; 0 for an empty slot or one not adapting this weight

    @property
    def num_slots(self) -> int:
        return int(self.lora_a.shape[0])


def add_lora(
    y: torch.Tensor, x: torch.Tensor, weights: LoRAWeights, token_slots: torch.Tensor
) -> torch.Tensor:
    """y [N, out] += each token's adapter delta of x [N, in]; in place, returns y."""
    if use_triton(y, x, weights.lora_a, weights.lora_b, token_slots):
        from . import triton_lora

        return triton_lora.add_lora(y, x, weights, token_slots)
    return add_lora_ref(y, x, weights, token_slots)


def add_lora_ref(
    y: torch.Tensor, x: torch.Tensor, weights: LoRAWeights, token_slots: torch.Tensor
) -> torch.Tensor:
    """The torch reference: per adapter present, gather its tokens, shrink, expand, add."""
    used = token_slots[token_slots >= 0]
    for slot in torch.unique(used).tolist():
        scale = float(weights.scales[slot])
        if scale == 0.0:
            continue
        rows = torch.nonzero(token_slots == slot).squeeze(1)
        shrunk = x[rows] @ weights.lora_a[slot].to(x.dtype).t()
        delta = (shrunk @ weights.lora_b[slot].to(x.dtype).t()) * scale
        y.index_add_(0, rows, delta.to(y.dtype))
    return y


@dataclass(frozen=True)
class MoELoRA:
    """Adapters of the experts of one layer, per (slot, local expert): the stacks are
    [S * E_local, ...] with row slot * E_local + expert, and each token's slot."""

    gate_up: LoRAWeights  # A [S*E, R, hidden], B [S*E, 2I, R]
    down: LoRAWeights  # A [S*E, R, I], B [S*E, hidden, R]
    token_slots: torch.Tensor  # [N]
    num_local_experts: int

    def pair_slots(self, tokens: torch.Tensor, local_ids: torch.Tensor) -> torch.Tensor:
        """The stack row of each (token, local expert) pair; -1 where the token has none."""
        slots = self.token_slots[tokens].to(torch.int64)
        return torch.where(slots >= 0, slots * self.num_local_experts + local_ids, -1)
