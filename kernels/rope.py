"""Rotary position embedding, half-split (NeoX) layout: rotate x[:d/2] against x[d/2:]."""

from __future__ import annotations

import torch

from .backend import use_triton


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [tokens, heads, head_dim] by per-token angles; cos/sin [tokens, head_dim/2].

    cos/sin already carry YaRN's concentration factor (see workers.model.RotaryEmbedding).
    """
    if use_triton(x, cos, sin):
        from . import triton_rope

        return triton_rope.apply_rope(x, cos, sin)
    return apply_rope_ref(x, cos, sin)


def apply_rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The torch reference: cos/sin are cast to x's dtype first, as gpt-oss and transformers do."""
    cos = cos.to(x.dtype).unsqueeze(-2)
    sin = sin.to(x.dtype).unsqueeze(-2)
    first, second = torch.chunk(x, 2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
