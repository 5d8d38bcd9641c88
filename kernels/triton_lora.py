"""Batched LoRA in Triton: each token row applies its own adapter slot (punica's BGMV form).

1. `_shrink_kernel`, one program per row: t[n] = scale[s] * A[s] @ x[n] (R values, fp32),
   the input dimension walked in BLOCK_K chunks.
2. `_expand_kernel`, one program per (row, BLOCK_N columns): y[n, cols] += B[s, cols] @ t[n].

Rows whose slot is -1 (the base model) exit at once. The rank is padded to a power of two
in registers only; the stacks are read as stored ([S, R, in] and [S, out, R], last dim
contiguous) and accumulated in fp32, then added to y in y's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .lora import LoRAWeights


@triton.jit
def _shrink_kernel(
    x_ptr,
    a_ptr,
    slots_ptr,
    scales_ptr,
    t_ptr,
    in_features,
    rank,
    stride_xn,
    stride_as,
    stride_ar,
    R_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    if slot >= 0:
        ranks = tl.arange(0, R_PAD)
        rank_ok = ranks < rank
        acc = tl.zeros((R_PAD,), tl.float32)
        for k0 in range(0, in_features, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < in_features
            x = tl.load(x_ptr + row * stride_xn + cols, mask=col_ok, other=0.0).to(tl.float32)
            a = tl.load(
                a_ptr + slot * stride_as + ranks[:, None] * stride_ar + cols[None, :],
                mask=rank_ok[:, None] & col_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            acc += tl.sum(a * x[None, :], axis=1)
        scale = tl.load(scales_ptr + slot).to(tl.float32)
        tl.store(t_ptr + row * R_PAD + ranks, acc * scale)


@triton.jit
def _expand_kernel(
    t_ptr,
    b_ptr,
    slots_ptr,
    y_ptr,
    out_features,
    rank,
    stride_bs,
    stride_bo,
    stride_yn,
    R_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    if slot >= 0:
        ranks = tl.arange(0, R_PAD)
        rank_ok = ranks < rank
        t = tl.load(t_ptr + row * R_PAD + ranks)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < out_features
        b = tl.load(
            b_ptr + slot * stride_bs + cols[:, None] * stride_bo + ranks[None, :],
            mask=col_ok[:, None] & rank_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        delta = tl.sum(b * t[None, :], axis=1)
        y = tl.load(y_ptr + row * stride_yn + cols, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(
            y_ptr + row * stride_yn + cols, (y + delta).to(y_ptr.dtype.element_ty), mask=col_ok
        )


def add_lora(
    y: torch.Tensor, x: torch.Tensor, weights: LoRAWeights, token_slots: torch.Tensor
) -> torch.Tensor:
    """kernels.lora.add_lora on the GPU: y [N, out] += each row's adapter delta, in place."""
    num_rows, in_features = x.shape
    out_features = y.shape[1]
    if num_rows == 0:
        return y
    lora_a = weights.lora_a if weights.lora_a.stride(-1) == 1 else weights.lora_a.contiguous()
    lora_b = weights.lora_b if weights.lora_b.stride(-1) == 1 else weights.lora_b.contiguous()
    x = x if x.stride(-1) == 1 else x.contiguous()
    assert y.stride(-1) == 1, "add_lora writes y in place: its last dimension must be contiguous"
    rank = lora_a.shape[1]
    r_pad = max(16, triton.next_power_of_2(rank))
    slots = token_slots.contiguous()
    shrunk = torch.empty(num_rows, r_pad, dtype=torch.float32, device=x.device)
    _shrink_kernel[(num_rows,)](
        x,
        lora_a,
        slots,
        weights.scales,
        shrunk,
        in_features,
        rank,
        x.stride(0),
        lora_a.stride(0),
        lora_a.stride(1),
        R_PAD=r_pad,
        BLOCK_K=128,
    )
    block_n = 64
    _expand_kernel[(num_rows, triton.cdiv(out_features, block_n))](
        shrunk,
        lora_b,
        slots,
        y,
        out_features,
        rank,
        lora_b.stride(0),
        lora_b.stride(1),
        y.stride(0),
        R_PAD=r_pad,
        BLOCK_N=block_n,
    )
    return y
