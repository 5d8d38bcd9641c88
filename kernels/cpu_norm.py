"""RMSNorm (and the residual add before it) on the CPU through csrc/rms_norm.c: one call per
norm instead of about ten small torch ops, which for a decode step of a few rows cost more
than the arithmetic. fp32 only; equal to the torch reference up to the order of the sum of
squares."""

from __future__ import annotations

import ctypes

import torch

from .native_build import FLOAT, INT32, INT64, POINTER, fp32_cpu_inference, function

_SIGNATURE = (POINTER, POINTER, POINTER, POINTER, FLOAT, INT64, INT32, POINTER, INT32)


def _kernel() -> ctypes._NamedFuncPointer | None:
    return function("rms_norm", "oss_rms_norm_f32", _SIGNATURE)


def supports(*tensors: torch.Tensor) -> bool:
    return fp32_cpu_inference(*tensors) and _kernel() is not None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """rms_norm_ref(x, weight, eps) for fp32 x [..., hidden]; call `supports` first."""
    return _run(x, None, weight, eps)[0]


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) for fp32 tensors; call `supports` first."""
    out, summed = _run(x, residual, weight, eps)
    assert summed is not None
    return out, summed


def _run(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    kernel = _kernel()
    assert kernel is not None
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty_like(x)
    summed = None
    if residual is not None:
        residual = residual.contiguous()
        summed = torch.empty_like(x)
    dim = x.shape[-1]
    kernel(
        x.data_ptr(), None if residual is None else residual.data_ptr(),
        None if summed is None else summed.data_ptr(), weight.data_ptr(), eps,
        x.numel() // max(dim, 1), dim, out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out, summed
