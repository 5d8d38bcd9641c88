"""Writing new keys/values into the paged KV cache in Triton (kernels.attention.store_kv).

The cache is [2, num_blocks, block_size, kv_heads, head_dim]; token i goes to flat slot
slot_mapping[i] = block * block_size + offset, and a slot of -1 means "do not store" (a
token whose KV another rank or an earlier step already holds).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(
    key_ptr,
    value_ptr,
    cache_ptr,
    slot_ptr,
    num_tokens,
    stride_kt,
    stride_vt,
    stride_c_kv,
    stride_cb,
    stride_cp,
    PAGE_SIZE: tl.constexpr,
    ROW: tl.constexpr,
    ROW_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    slots = tl.load(slot_ptr + tokens, mask=tokens < num_tokens, other=-1).to(tl.int64)
    cols = tl.arange(0, ROW_PAD)
    mask = (slots >= 0)[:, None] & (cols < ROW)[None, :]
    rows = tokens.to(tl.int64)[:, None]
    dest = cache_ptr + ((slots // PAGE_SIZE) * stride_cb + (slots % PAGE_SIZE) * stride_cp)[:, None]
    key = tl.load(key_ptr + rows * stride_kt + cols[None, :], mask=mask, other=0.0)
    value = tl.load(value_ptr + rows * stride_vt + cols[None, :], mask=mask, other=0.0)
    dtype = cache_ptr.dtype.element_ty
    tl.store(dest + cols[None, :], key.to(tl.float32).to(dtype), mask=mask)
    tl.store(dest + stride_c_kv + cols[None, :], value.to(tl.float32).to(dtype), mask=mask)


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """[N, heads, head_dim] with each token's heads x head_dim contiguous."""
    if t.stride(-1) == 1 and t.stride(-2) == t.shape[-1]:
        return t
    return t.contiguous()


def store_kv(
    kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Same contract as kernels.attention.store_kv."""
    if kv_cache.stride(-1) != 1 or kv_cache.stride(-2) != kv_cache.shape[-1]:
        raise ValueError(f"store_kv: kv_cache {tuple(kv_cache.shape)} needs contiguous heads")
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    key, value = _rows_contiguous(key), _rows_contiguous(value)
    row = kv_cache.shape[-2] * kv_cache.shape[-1]
    block_t = 16
    _store_kv_kernel[(triton.cdiv(num_tokens, block_t),)](
        key, value, kv_cache, slot_mapping.contiguous(), num_tokens,
        key.stride(0), value.stride(0), kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2),
        PAGE_SIZE=kv_cache.shape[2], ROW=row, ROW_PAD=triton.next_power_of_2(row), BLOCK_T=block_t,
    )  # fmt: skip
