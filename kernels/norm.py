"""RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32, returned in x's dtype
(on the CPU, for fp32, the C kernel of kernels.cpu_norm)."""

from __future__ import annotations

import torch

from . import cpu_norm
from .backend import use_triton


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalize the last dim of `x` [..., hidden] and scale by `weight` [hidden] (fp32)."""
    if use_triton(x, weight):
        from . import triton_norm

        return triton_norm.rms_norm(x, weight, eps)
    if cpu_norm.supports(x, weight):
        return cpu_norm.rms_norm(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The torch reference: no bias, no (1 + w) offset (gpt-oss keeps norms in fp32)."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * x32).to(x.dtype)
