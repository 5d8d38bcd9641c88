"""RMSNorm (and the residual add before it) on the CPU through csrc/rms_norm.c: one call per
norm instead of about ten small torch ops, which for a decode step of a few rows cost more
than the arithmetic. fp32 only; equal to the torch reference up to the order of the sum of
squares."""

from __future__ import annotations

import ctypes
import functools

import torch

from .native_build import load

_float_p = ctypes.POINTER(ctypes.c_float)


@functools.cache
def _kernel() -> ctypes._NamedFuncPointer | None:
    library = load("rms_norm")
    if library is None:
        return None
    function = library.oss_rms_norm_f32
    function.restype = None
    function.argtypes = [
        _float_p, _float_p, _float_p, _float_p, ctypes.c_float, ctypes.c_int64, ctypes.c_int32,
        _float_p, ctypes.c_int32,
    ]  # fmt: skip
    return function


def supports(*tensors: torch.Tensor) -> bool:
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_grad_enabled()
        and _kernel() is not None
    )


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
        ctypes.cast(x.data_ptr(), _float_p),
        None if residual is None else ctypes.cast(residual.data_ptr(), _float_p),
        None if summed is None else ctypes.cast(summed.data_ptr(), _float_p),
        ctypes.cast(weight.data_ptr(), _float_p), eps, x.numel() // max(dim, 1), dim,
        ctypes.cast(out.data_ptr(), _float_p), torch.get_num_threads(),
    )  # fmt: skip
    return out, summed
