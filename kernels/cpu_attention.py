"""Paged attention on the CPU through the C kernel in csrc/paged_attention.c.

It reads keys and values in place through the block table, so a decode step costs one pass
over each sequence's cache instead of gathered copies, masks and a padded softmax; prefill
chunks (several queries per sequence) take the same kernel. fp32 queries and caches only:
callers keep the torch path for other dtypes, or when the kernel can't be built.
"""

from __future__ import annotations

import ctypes

import torch

from .native_build import FLOAT, INT32, INT64, POINTER, fp32_cpu_inference, function

_SIGNATURE = (
    POINTER, POINTER, POINTER, POINTER, INT64, POINTER, POINTER, INT32, POINTER, FLOAT, INT32,
    INT32, INT32, INT32, INT32, INT32, POINTER, INT32,
)  # fmt: skip


def _kernel() -> ctypes._NamedFuncPointer | None:
    return function("paged_attention", "oss_paged_attention_f32", _SIGNATURE, ctypes.c_int)


def supports(query: torch.Tensor, kv_cache: torch.Tensor, sinks: torch.Tensor) -> bool:
    """Whether the C kernel takes this call (fp32 CPU tensors, and it could be built)."""
    return (
        fp32_cpu_inference(query, kv_cache) and kv_cache.is_contiguous() and _kernel() is not None
    )


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    sinks: torch.Tensor,
    *,
    sm_scale: float,
    sliding_window: int | None,
) -> torch.Tensor | None:
    """query [N, q_heads, head_dim] over the cache; None when a shape is past the kernel's
    limits (GQA group > 16, head_dim > 256), so the caller takes its torch path."""
    kernel = _kernel()
    assert kernel is not None, "call supports() first"
    num_tokens, q_heads, head_dim = query.shape
    block_size, kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    query = query.contiguous()
    table = block_table.to(torch.int32).contiguous()
    lens = seq_lens.to(torch.int32).contiguous()
    starts = query_start_loc.to(torch.int32).contiguous()
    sink = sinks.to(torch.float32).contiguous()
    out = torch.empty_like(query)
    keys = kv_cache.data_ptr()
    values = keys + kv_cache.stride(0) * kv_cache.element_size()
    status = kernel(
        query.data_ptr(), keys, values, table.data_ptr(), table.shape[1], lens.data_ptr(),
        starts.data_ptr(), lens.shape[0], sink.data_ptr(), sm_scale, sliding_window or 0,
        num_tokens, q_heads, kv_heads, head_dim, block_size, out.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return out if status == 0 else None
