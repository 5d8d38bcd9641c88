"""gpt-oss sink attention in Triton: one kernel for paged decode, paged prefill/extend and
cache-free varlen attention, plus a merge kernel for split-K (flash-decoding).

A program owns one tile of BLOCK_Q consecutive queries of one sequence times the GROUP
query heads that share one KV head (rows = query x head, so GQA reads each key once per
tile), and walks the keys in tiles of BLOCK_N with an online softmax. Every sequence of
the flat batch is in the same launch: sequence s owns query tiles
[qsl[s] // BLOCK_Q + s, qsl[s + 1] // BLOCK_Q + s + 1) and a program finds its sequence by
binary search (vLLM's unified-attention layout), so no host sync is needed.

- Keys are looked up per key through the block table, so BLOCK_N is free of the cache's
  block size; keys outside [first visible, last query] are never loaded (sliding layers
  skip every tile wholly outside the window, and garbage such as NaN in unused cache slots
  cannot leak in).
- The sink is the running max's and the denominator's starting value (m = S, l = 1): a
  key with logit S and no value vector. Scores run in base 2 (sm_scale * log2 e).
- Split-K: with NUM_SPLITS > 1 each program takes a share of its tiles and stores the
  unnormalised partial (acc, m, l); the sink is counted in split 0 only; `_merge_kernel`
  rescales and sums them. Used for decode batches with long contexts and few sequences.
- Loads are upcast to fp32; dot operands are cast to the query dtype (bf16 on GPUs).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)
_TARGET_PROGRAMS = 256  # about two waves on a 108-132 SM GPU
_MAX_SPLITS = 16
_MIN_KEYS_PER_SPLIT = 256


@triton.jit
def _find_sequence(query_start_loc_ptr, num_seqs, q_tile, BLOCK_Q: tl.constexpr):
    """The sequence that owns query tile q_tile (num_seqs when the tile is surplus)."""
    lo: tl.int32 = 0
    hi: tl.int32 = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        next_first_tile = tl.load(query_start_loc_ptr + mid + 1) // BLOCK_Q + mid + 1
        if next_first_tile <= q_tile:
            lo = mid + 1
        else:
            hi = mid
    return lo


@triton.jit
def _key_offsets(
    block_table_ptr,
    seq,
    q_begin,
    keys,
    key_ok,
    stride_kb,
    stride_kp,
    stride_bt,
    PAGED: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
):
    """(element offset of each key's row, which keys exist) for key positions `keys`."""
    if PAGED:
        block = tl.load(block_table_ptr + seq * stride_bt + keys // PAGE_SIZE, mask=key_ok, other=0)
        key_ok = key_ok & (block >= 0)
        offsets = block.to(tl.int64) * stride_kb + (keys % PAGE_SIZE) * stride_kp
    else:
        offsets = (q_begin + keys).to(tl.int64) * stride_kb
    return offsets, key_ok


@triton.jit
def _attend_key_tile(
    q,
    q_pos,
    acc,
    m_i,
    l_i,
    k_rows_ptr,
    v_rows_ptr,
    keys,
    key_ok,
    dims,
    d_ok,
    sm_scale_log2,
    window,
    HAS_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One online-softmax step over a tile of keys (rows of K/V at k_rows_ptr/v_rows_ptr)."""
    dot_dtype = q.dtype
    k_t = tl.load(
        k_rows_ptr[None, :] + dims[:, None], mask=key_ok[None, :] & d_ok[:, None], other=0.0
    ).to(tl.float32)
    v = tl.load(
        v_rows_ptr[:, None] + dims[None, :], mask=key_ok[:, None] & d_ok[None, :], other=0.0
    ).to(tl.float32)
    scores = tl.dot(q, k_t.to(dot_dtype), input_precision=DOT_PRECISION) * sm_scale_log2
    visible = key_ok[None, :] & (keys[None, :] <= q_pos[:, None])
    if HAS_WINDOW:
        visible = visible & (keys[None, :] > q_pos[:, None] - window)
    scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(scores - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(
        p.to(dot_dtype), v.to(dot_dtype), acc * alpha[:, None], input_precision=DOT_PRECISION
    )
    return acc, m_new, l_i


@triton.jit
def _attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    sinks_ptr,
    block_table_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    num_seqs,
    num_tokens,
    sm_scale_log2,
    window,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_kp,
    stride_kh,
    stride_bt,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    PAGED: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    q_tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = _find_sequence(query_start_loc_ptr, num_seqs, q_tile, BLOCK_Q)
    if seq >= num_seqs:
        return
    q_begin = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_begin
    first_q = (q_tile - (q_begin // BLOCK_Q + seq)) * BLOCK_Q
    if first_q >= q_len:
        return
    context = 0
    if PAGED:
        context = tl.load(seq_lens_ptr + seq) - q_len
    dot_dtype = q_ptr.dtype.element_ty

    rows = tl.arange(0, BLOCK_M)
    q_index = first_q + rows // GROUP_PAD
    heads = kv_head * GROUP + rows % GROUP_PAD
    row_ok = (q_index < q_len) & (rows % GROUP_PAD < GROUP)
    q_pos = context + q_index
    tokens = (q_begin + q_index).to(tl.int64)
    dims = tl.arange(0, D_PAD)
    d_ok = dims < HEAD_DIM
    q = tl.load(
        q_ptr + tokens[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    q = q.to(dot_dtype)

    # keys [kv_begin, kv_end): from the first query's window start to the last query
    kv_end = context + tl.minimum(first_q + BLOCK_Q, q_len)
    kv_begin = 0
    if HAS_WINDOW:
        kv_begin = tl.maximum(context + first_q - window + 1, 0)
    tile_begin = kv_begin // BLOCK_N
    tiles = tl.cdiv(kv_end, BLOCK_N) - tile_begin
    tiles_per_split = tl.cdiv(tiles, NUM_SPLITS)
    t_lo = tile_begin + split * tiles_per_split
    t_hi = tl.minimum(t_lo + tiles_per_split, tile_begin + tiles)

    sink = tl.load(sinks_ptr + heads, mask=row_ok, other=0.0).to(tl.float32) * 1.4426950408889634
    # a split that has seen no key yet starts at a finite floor, so that no inf - inf occurs
    m_i = tl.where(split == 0, sink, -1.0e30)
    l_i = tl.where(split == 0, 1.0, 0.0) + tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    k_ptr += kv_head * stride_kh
    v_ptr += kv_head * stride_kh
    for t in range(t_lo, t_hi):
        keys = t * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = (keys >= kv_begin) & (keys < kv_end)
        offsets, key_ok = _key_offsets(
            block_table_ptr, seq, q_begin, keys, key_ok, stride_kb, stride_kp, stride_bt,
            PAGED, PAGE_SIZE,
        )  # fmt: skip
        acc, m_i, l_i = _attend_key_tile(
            q, q_pos, acc, m_i, l_i, k_ptr + offsets, v_ptr + offsets, keys, key_ok, dims, d_ok,
            sm_scale_log2, window, HAS_WINDOW, DOT_PRECISION,
        )  # fmt: skip

    if NUM_SPLITS == 1:
        tl.store(
            out_ptr + tokens[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :],
            (acc / l_i[:, None]).to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & d_ok[None, :],
        )
    else:  # unnormalised partials for _merge_kernel
        part = (split * num_tokens + tokens) * (tl.num_programs(1) * GROUP) + heads
        tl.store(part_max_ptr + part, m_i, mask=row_ok)
        tl.store(part_sum_ptr + part, l_i, mask=row_ok)
        tl.store(part_acc_ptr + part[:, None] * D_PAD + dims[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _merge_kernel(
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    out_ptr,
    num_tokens,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    """out[token, head] = sum_s acc_s 2^(m_s - M) / sum_s l_s 2^(m_s - M)."""
    token = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    split_ok = splits < NUM_SPLITS
    part = (splits * num_tokens + token) * tl.num_programs(1) + head
    m = tl.load(part_max_ptr + part, mask=split_ok, other=float("-inf"))
    scale = tl.exp2(m - tl.max(m, axis=0))
    denominator = tl.sum(tl.load(part_sum_ptr + part, mask=split_ok, other=0.0) * scale, axis=0)
    dims = tl.arange(0, D_PAD)
    acc = tl.load(
        part_acc_ptr + part[:, None] * D_PAD + dims[None, :], mask=split_ok[:, None], other=0.0
    )
    out = tl.sum(acc * scale[:, None], axis=0) / denominator
    tl.store(
        out_ptr + token.to(tl.int64) * stride_ot + head * stride_oh + dims,
        out.to(out_ptr.dtype.element_ty),
        mask=dims < HEAD_DIM,
    )


def _tile_shape(group: int, max_query_len: int) -> tuple[int, int, int]:
    """(GROUP_PAD, BLOCK_Q, BLOCK_M): rows = queries x heads of a group, at least 16 (tl.dot)."""
    group_pad = triton.next_power_of_2(group)
    block_q = min(triton.next_power_of_2(max(max_query_len, 1)), max(1, 64 // group_pad))
    return group_pad, block_q, max(16, block_q * group_pad)


def num_kv_splits(num_seqs: int, kv_heads: int, max_keys: int, block_n: int) -> int:
    """Split-K factor for decode: enough programs to fill the GPU, >= 256 keys per split."""
    wanted = triton.cdiv(_TARGET_PROGRAMS, max(num_seqs * kv_heads, 1))
    useful = max(triton.cdiv(max_keys, max(_MIN_KEYS_PER_SPLIT, block_n)), 1)
    return max(1, min(wanted, useful, _MAX_SPLITS))


def _launch(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    key_strides: tuple[int, int, int],
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    sinks: torch.Tensor,
    *,
    sm_scale: float,
    sliding_window: int | None,
    max_query_len: int,
    page_size: int,
    paged: bool,
    num_splits: int,
) -> torch.Tensor:
    num_tokens, q_heads, head_dim = query.shape
    kv_heads = keys.shape[-2]
    if q_heads % kv_heads:
        raise ValueError(f"attention: {q_heads} query heads are not a multiple of {kv_heads}")
    query = query if query.stride(-1) == 1 else query.contiguous()
    out = torch.empty_like(query)
    num_seqs = query_start_loc.shape[0] - 1
    if num_tokens == 0 or num_seqs == 0:
        return out
    group = q_heads // kv_heads
    group_pad, block_q, block_m = _tile_shape(group, max_query_len)
    d_pad = max(16, triton.next_power_of_2(head_dim))
    block_n = 64 if d_pad <= 64 else 32
    splits = max(1, min(num_splits, _MAX_SPLITS))
    part_acc = part_max = part_sum = out  # placeholders when not splitting
    if splits > 1:
        part_acc = torch.empty(splits, num_tokens, q_heads, d_pad, device=query.device)
        part_max = torch.empty(splits, num_tokens, q_heads, device=query.device)
        part_sum = torch.empty_like(part_max)
    grid = (num_tokens // block_q + num_seqs, kv_heads, splits)
    _attention_kernel[grid](
        query, keys, values, out, sinks.contiguous(),
        block_table, seq_lens, query_start_loc, part_acc, part_max, part_sum,
        num_seqs, num_tokens, sm_scale * LOG2E, sliding_window or 0,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        *key_strides, block_table.stride(0),
        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim, D_PAD=d_pad,
        BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n, PAGE_SIZE=page_size,
        PAGED=paged, HAS_WINDOW=sliding_window is not None, NUM_SPLITS=splits,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    if splits > 1:
        _merge_kernel[(num_tokens, q_heads)](
            part_acc, part_max, part_sum, out, num_tokens, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, D_PAD=d_pad, NUM_SPLITS=splits,
            SPLITS_PAD=max(2, triton.next_power_of_2(splits)),
        )  # fmt: skip
    return out


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
    max_query_len: int,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Same contract as kernels.attention.paged_attention; `num_splits` forces split-K
    (default: chosen for decode batches from the block table's capacity)."""
    if kv_cache.stride(-1) != 1 or kv_cache.stride(-2) != kv_cache.shape[-1]:
        kv_cache = kv_cache.contiguous()
    page_size, kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    if num_splits is None:
        num_splits = 1
        if max_query_len == 1:
            max_keys = block_table.shape[1] * page_size
            if sliding_window is not None:
                max_keys = min(max_keys, sliding_window + page_size)
            num_splits = num_kv_splits(seq_lens.shape[0], kv_heads, max_keys, 64)
    return _launch(
        query,
        kv_cache[0],
        kv_cache[1],
        (kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3)),
        block_table if block_table.stride(-1) == 1 else block_table.contiguous(),
        seq_lens,
        query_start_loc,
        sinks,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        max_query_len=max_query_len,
        page_size=page_size,
        paged=True,
        num_splits=num_splits,
    )


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    query_start_loc: torch.Tensor,
    sinks: torch.Tensor,
    *,
    sm_scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """Same contract as kernels.attention.varlen_attention (causal within each sequence)."""
    key = key if key.stride(-1) == 1 else key.contiguous()
    value = value if value.stride() == key.stride() else value.contiguous()
    key = key if value.stride() == key.stride() else key.contiguous()
    return _launch(
        query,
        key,
        value,
        (key.stride(0), 0, key.stride(1)),
        query_start_loc,  # unused (no block table)
        query_start_loc,  # unused (seq_len = query length)
        query_start_loc,
        sinks,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        max_query_len=query.shape[0],  # an upper bound: no host sync
        page_size=1,
        paged=False,
        num_splits=1,
    )
