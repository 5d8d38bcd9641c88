"""Rotary embedding of q and k in place on the CPU, through csrc/rope.c: bit-for-bit
kernels.rope.apply_rope_ref, in one call instead of about a dozen small torch ops per tensor
(which, for a decode step of a few tokens, cost more than the arithmetic)."""

from __future__ import annotations

import ctypes

import torch

from .native_build import INT32, INT64, POINTER, fp32_cpu_inference, function

_SIGNATURE = (POINTER, INT32, INT64, POINTER, INT32, INT64, INT64, INT32, POINTER, POINTER, INT32)


def _kernel() -> ctypes._NamedFuncPointer | None:
    return function("rope", "oss_rope_qk_f32", _SIGNATURE)


def _rows_packed(x: torch.Tensor) -> bool:
    """[tokens, heads, head_dim] with each token's heads packed (any token stride)."""
    return x.stride(2) == 1 and x.stride(1) == x.shape[2]


def supports(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    return (
        fp32_cpu_inference(q, k, cos, sin)
        and _rows_packed(q)
        and _rows_packed(k)
        and _kernel() is not None
    )


def rope_qk_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate q [tokens, q_heads, d] and k [tokens, kv_heads, d] in place; cos/sin
    [tokens, d/2] fp32. Call `supports` first."""
    kernel = _kernel()
    assert kernel is not None
    cos, sin = cos.contiguous(), sin.contiguous()
    kernel(
        q.data_ptr(), q.shape[1], q.stride(0), k.data_ptr(), k.shape[1], k.stride(0), q.shape[0],
        q.shape[2], cos.data_ptr(), sin.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
