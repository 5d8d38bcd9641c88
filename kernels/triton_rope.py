"""Rotary embedding (half-split / NeoX layout) in Triton: q and k of a token in one program.

cos/sin [tokens, head_dim/2] come precomputed with YaRN's frequencies and concentration
(workers.model.RotaryEmbedding), once per forward pass for every layer. Like the torch
reference they are rounded to the activation dtype first; the rotation runs in fp32.
Outputs may alias the inputs: `rope_qk_` rotates q and k in place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    x_ptr,
    out_ptr,
    cos,
    sin,
    token,
    num_heads,
    stride_xt,
    stride_xh,
    stride_ot,
    stride_oh,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    HEADS_PAD: tl.constexpr,
):
    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, HALF_PAD)
    mask = (heads < num_heads)[:, None] & (dims < HALF)[None, :]
    src = x_ptr + token * stride_xt + heads[:, None] * stride_xh + dims[None, :]
    first = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    second = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    dst = out_ptr + token * stride_ot + heads[:, None] * stride_oh + dims[None, :]
    dtype = out_ptr.dtype.element_ty
    tl.store(dst, (first * cos - second * sin).to(dtype), mask=mask)
    tl.store(dst + HALF, (second * cos + first * sin).to(dtype), mask=mask)


@triton.jit
def _rope_kernel(
    q_ptr,
    q_out_ptr,
    k_ptr,
    k_out_ptr,
    cos_ptr,
    sin_ptr,
    q_heads,
    k_heads,
    stride_qt,
    stride_qh,
    stride_qot,
    stride_qoh,
    stride_kt,
    stride_kh,
    stride_kot,
    stride_koh,
    stride_ct,
    stride_st,
    HAS_K: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    Q_HEADS_PAD: tl.constexpr,
    K_HEADS_PAD: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    dims = tl.arange(0, HALF_PAD)
    dtype = q_out_ptr.dtype.element_ty
    cos = tl.load(cos_ptr + token * stride_ct + dims, mask=dims < HALF, other=0.0)
    sin = tl.load(sin_ptr + token * stride_st + dims, mask=dims < HALF, other=0.0)
    cos = cos.to(dtype).to(tl.float32)[None, :]
    sin = sin.to(dtype).to(tl.float32)[None, :]
    _rotate_heads(
        q_ptr, q_out_ptr, cos, sin, token, q_heads, stride_qt, stride_qh, stride_qot, stride_qoh,
        HALF, HALF_PAD, Q_HEADS_PAD,
    )  # fmt: skip
    if HAS_K:
        _rotate_heads(
            k_ptr, k_out_ptr, cos, sin, token, k_heads, stride_kt, stride_kh, stride_kot,
            stride_koh, HALF, HALF_PAD, K_HEADS_PAD,
        )  # fmt: skip


def _launch(
    q: torch.Tensor,
    q_out: torch.Tensor,
    k: torch.Tensor | None,
    k_out: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> None:
    num_tokens, q_heads, head_dim = q.shape
    if q.stride(-1) != 1 or (k is not None and k.stride(-1) != 1):
        raise ValueError("rope: q and k need a contiguous head_dim")
    if num_tokens == 0:
        return
    k_in = q if k is None else k
    k_dst = q_out if k_out is None else k_out
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    _rope_kernel[(num_tokens,)](
        q, q_out, k_in, k_dst, cos, sin, q_heads, k_in.shape[1],
        q.stride(0), q.stride(1), q_out.stride(0), q_out.stride(1),
        k_in.stride(0), k_in.stride(1), k_dst.stride(0), k_dst.stride(1),
        cos.stride(0), sin.stride(0),
        HAS_K=k is not None, HALF=head_dim // 2,
        HALF_PAD=triton.next_power_of_2(head_dim // 2),
        Q_HEADS_PAD=triton.next_power_of_2(q_heads),
        K_HEADS_PAD=triton.next_power_of_2(k_in.shape[1]),
    )  # fmt: skip


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Same contract as kernels.rope.apply_rope: a new rotated tensor [tokens, heads, head_dim]."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty_like(x)
    _launch(x, out, None, None, cos, sin)
    return out


def rope_qk_(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [tokens, q_heads, d] and k [tokens, kv_heads, d] in place in one launch."""
    _launch(q, q, k, k, cos, sin)
    return q, k
