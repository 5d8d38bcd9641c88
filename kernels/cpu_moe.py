"""gpt-oss's experts on the CPU for small batches, through the C kernel in csrc/moe_experts.c.

A decode batch of a few dozen tokens gives each expert a handful of rows: a library GEMM per
expert then costs more in calls and thread start-up than in arithmetic. The C kernel does the
whole block (both projections of every expert, the SwiGLU and the weighted sum) in one call
on torch's OpenMP threads. Dense fp32 experts only; larger batches keep the grouped GEMMs.
"""

from __future__ import annotations

import ctypes

import torch

from .native_build import FLOAT, INT32, POINTER, fp32_cpu_inference, function

# tokens per step up to which the kernel beats one GEMM per expert (measured on the
# side-by-side checkpoint, 8 experts top-2, hidden 256: 1.7 against 1.9 ms at 128 tokens,
# 3.2 against 3.0 ms at 256)
MAX_TOKENS = 128

_SIGNATURE = (
    POINTER, INT32, INT32, POINTER, POINTER, INT32, POINTER, POINTER, POINTER, POINTER, INT32,
    INT32, INT32, FLOAT, FLOAT, POINTER, INT32,
)  # fmt: skip


def _kernel() -> ctypes._NamedFuncPointer | None:
    return function("moe_experts", "oss_moe_experts_f32", _SIGNATURE, ctypes.c_int)


def supports(x: torch.Tensor, w1: torch.Tensor, w1_scales: torch.Tensor | None) -> bool:
    """Whether the kernel takes this call: a small fp32 CPU batch, dense weights, no autograd."""
    return (
        w1_scales is None
        and fp32_cpu_inference(x, w1)
        and x.shape[0] <= MAX_TOKENS
        and _kernel() is not None
    )


def moe_experts(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    *,
    swiglu_alpha: float,
    swiglu_limit: float,
    expert_start: int,
) -> torch.Tensor | None:
    """sum_k w_k * expert_{id_k}(x) over the local experts, or None if the kernel declined."""
    kernel = _kernel()
    assert kernel is not None, "call supports() first"
    x, w1, b1, w2, b2 = (t.float().contiguous() for t in (x, w1, b1, w2, b2))
    ids = topk_ids.to(torch.int64).contiguous()
    weights = topk_weights.to(torch.float32).contiguous()
    out = torch.empty_like(x)
    status = kernel(
        x.data_ptr(), x.shape[0], x.shape[1], ids.data_ptr(), weights.data_ptr(), ids.shape[1],
        w1.data_ptr(), b1.data_ptr(), w2.data_ptr(), b2.data_ptr(), w1.shape[0], expert_start,
        w2.shape[2], swiglu_alpha, swiglu_limit, out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out if status == 0 else None
