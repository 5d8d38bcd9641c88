"""RMSNorm in Triton, optionally fused with the residual add that precedes it.

With a residual, the kernel writes the sum (rounded to the activation dtype, exactly as
`x + residual` would be) and normalises that rounded sum, so fused and unfused paths agree.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    sum_ptr,
    hidden,
    eps,
    stride_xt,
    stride_rt,
    stride_ot,
    stride_st,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    ok = cols < hidden
    x = tl.load(x_ptr + row * stride_xt + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_rt + cols, mask=ok, other=0.0)
        total = (x + residual.to(tl.float32)).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * stride_st + cols, total, mask=ok)
        x = total.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    weight = tl.load(weight_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(
        out_ptr + row * stride_ot + cols,
        (weight * (x * inv_rms)).to(out_ptr.dtype.element_ty),
        mask=ok,
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    flat = t.reshape(-1, t.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def _launch(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, summed); summed is a dummy (the normed tensor) without a residual."""
    hidden = x.shape[-1]
    rows = _rows(x)
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    total = torch.empty_like(out) if residual is not None else out
    res_rows = _rows(residual) if residual is not None else rows
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](
            rows, res_rows, weight.contiguous(), out, total, hidden, eps,
            rows.stride(0), res_rows.stride(0), out.stride(0), total.stride(0),
            HAS_RESIDUAL=residual is not None, BLOCK_H=triton.next_power_of_2(hidden),
        )  # fmt: skip
    return out.reshape(x.shape), total.reshape(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Same contract as kernels.norm.rms_norm."""
    return _launch(x, None, weight, eps)[0]


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as kernels.fused.add_rms_norm: (rms_norm(x + residual), x + residual)."""
    return _launch(x, residual, weight, eps)
