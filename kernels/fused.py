"""Fused forms of two model steps: each does in one pass what two kernel calls do, with the
same result.

- `add_rms_norm`: the residual add before a norm, and the norm (gpt-oss does this twice
  per layer: `x = x + attn(...)`, then `post_attention_layernorm(x)`).
- `rope_qk_`: q and k rotated in place in one launch instead of two new tensors (on the CPU,
  fp32: the C kernel of kernels.cpu_rope).
"""

from __future__ import annotations

import torch

from . import cpu_norm, cpu_rope
from .backend import use_triton
from .norm import rms_norm_ref
from .rope import apply_rope_ref


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual); the sum is rounded to x's dtype first."""
    if use_triton(x, residual, weight):
        from . import triton_norm

        return triton_norm.add_rms_norm(x, residual, weight, eps)
    if cpu_norm.supports(x, residual, weight):
        return cpu_norm.add_rms_norm(x, residual, weight, eps)
    return add_rms_norm_ref(x, residual, weight, eps)


def add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    summed = x + residual
    return rms_norm_ref(summed, weight, eps), summed


def rope_qk_(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [tokens, q_heads, d] and k [tokens, kv_heads, d] in place; returns (q, k)."""
    if use_triton(q, k, cos, sin):
        from . import triton_rope

        return triton_rope.rope_qk_(q, k, cos, sin)
    if cpu_rope.supports(q, k, cos, sin):
        cpu_rope.rope_qk_(q, k, cos, sin)
        return q, k
    return rope_qk_ref_(q, k, cos, sin)


def rope_qk_ref_(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    q.copy_(apply_rope_ref(q, cos, sin))
    k.copy_(apply_rope_ref(k, cos, sin))
    return q, k
