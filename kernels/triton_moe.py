"""The gpt-oss mixture of experts in Triton: routing, token alignment, two grouped GEMMs.

1. `route`: top-k of each token's router logits, softmax over the k (one program per tile
   of tokens).
2. `align_by_expert`: a deterministic counting sort of the (token, slot) pairs by local
   expert, each expert's run padded to a multiple of BLOCK_M, so that one GEMM tile holds
   rows of one expert only (vLLM's moe_align_block_size). Pairs routed to experts of other
   expert-parallel ranks are dropped here. Three small launches, no host sync: the GEMM
   grids are sized by an upper bound and surplus programs exit.
3. `_gate_up_kernel`: x @ W1_e^T + b1 with the gate (even rows) and up (odd rows) of each
   intermediate unit in two accumulators, then gpt-oss's clamped SwiGLU, -> h [pairs, I].
4. `_down_kernel`: h @ W2_e^T + b2, times the pair's routing weight -> y [pairs, H].
5. `_combine_kernel`: out[t] = sum of the token's local pairs (fp32, then the output dtype).

Weights are read as stored: dense [E, out, in] or MXFP4 blocks [E, out, in/32, 16] with
scales [E, out, in/32], decoded in registers (kernels.triton_mxfp4); IS_MXFP4 picks the
load path, everything else is one kernel. Activations stay in their dtype (bf16 on GPUs);
every load is upcast to fp32 and dot operands are cast back to the activation dtype, with
fp32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_mxfp4 import mxfp4_tile_to_f32

ALIGN_CHUNK = 128  # pairs per program in the counting sort


@triton.jit
def _route_kernel(
    logits_ptr,
    weights_ptr,
    ids_ptr,
    num_tokens,
    num_experts,
    stride_lt,
    TOP_K: tl.constexpr,
    K_PAD: tl.constexpr,
    E_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < num_tokens
    cols = tl.arange(0, E_PAD)
    mask = row_ok[:, None] & (cols < num_experts)[None, :]
    values = tl.load(
        logits_ptr + rows[:, None] * stride_lt + cols[None, :], mask=mask, other=float("-inf")
    ).to(tl.float32)
    values = tl.where(row_ok[:, None], values, 0.0)  # rows past the end: finite, never stored
    slots = tl.arange(0, K_PAD)
    top_values = tl.full((BLOCK_T, K_PAD), float("-inf"), tl.float32)
    top_ids = tl.zeros((BLOCK_T, K_PAD), tl.int32)
    for i in tl.static_range(TOP_K):  # k rounds of argmax; ties go to the lower expert id
        best = tl.max(values, axis=1)
        best_id = tl.argmax(values, axis=1)
        top_values = tl.where(slots[None, :] == i, best[:, None], top_values)
        top_ids = tl.where(slots[None, :] == i, best_id[:, None], top_ids)
        values = tl.where(cols[None, :] == best_id[:, None], float("-inf"), values)
    probs = tl.exp(top_values - tl.max(top_values, axis=1)[:, None])
    probs = probs / tl.sum(probs, axis=1)[:, None]
    out_mask = row_ok[:, None] & (slots < TOP_K)[None, :]
    offsets = rows[:, None] * TOP_K + slots[None, :]
    tl.store(weights_ptr + offsets, probs.to(weights_ptr.dtype.element_ty), mask=out_mask)
    tl.store(ids_ptr + offsets, top_ids.to(ids_ptr.dtype.element_ty), mask=out_mask)


def route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [N, k] in the logits' dtype, expert ids [N, k] int64), ids by falling logit."""
    num_tokens, num_experts = router_logits.shape
    logits = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    weights = torch.empty(num_tokens, top_k, dtype=logits.dtype, device=logits.device)
    ids = torch.empty(num_tokens, top_k, dtype=torch.int64, device=logits.device)
    if num_tokens:
        block_t = 16
        _route_kernel[(triton.cdiv(num_tokens, block_t),)](
            logits,
            weights,
            ids,
            num_tokens,
            num_experts,
            logits.stride(0),
            TOP_K=top_k,
            K_PAD=triton.next_power_of_2(top_k),
            E_PAD=triton.next_power_of_2(num_experts),
            BLOCK_T=block_t,
        )
    return weights, ids


# --- alignment: a counting sort of (token, slot) pairs by local expert -------------------------
@triton.jit
def _local_experts(ids_ptr, chunk, num_pairs, expert_start, num_local, CHUNK: tl.constexpr):
    """(pair indices, local expert ids, valid mask) of one chunk of the flattened topk_ids."""
    pairs = chunk * CHUNK + tl.arange(0, CHUNK)
    in_range = pairs < num_pairs
    local = tl.load(ids_ptr + pairs, mask=in_range, other=0).to(tl.int32) - expert_start
    valid = in_range & (local >= 0) & (local < num_local)
    return pairs, tl.where(valid, local, 0), valid


@triton.jit
def _count_kernel(
    ids_ptr,
    counts_ptr,
    num_pairs,
    expert_start,
    num_local,
    CHUNK: tl.constexpr,
    E_PAD: tl.constexpr,
):
    chunk = tl.program_id(0)
    _, local, valid = _local_experts(ids_ptr, chunk, num_pairs, expert_start, num_local, CHUNK)
    experts = tl.arange(0, E_PAD)
    one_hot = (local[:, None] == experts[None, :]) & valid[:, None]
    tl.store(counts_ptr + chunk * E_PAD + experts, tl.sum(one_hot.to(tl.int32), axis=0))


@triton.jit
def _offsets_kernel(
    counts_ptr,
    chunk_base_ptr,
    expert_offset_ptr,
    block_expert_ptr,
    num_padded_ptr,
    num_chunks,
    max_blocks,
    BLOCK_M: tl.constexpr,
    E_PAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """One program: per-chunk bases, each expert's padded start, and each tile's expert."""
    experts = tl.arange(0, E_PAD)
    running = tl.zeros((E_PAD,), tl.int32)
    for chunk in range(num_chunks):
        tl.store(chunk_base_ptr + chunk * E_PAD + experts, running)
        running += tl.load(counts_ptr + chunk * E_PAD + experts)
    padded = (running + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    tl.store(expert_offset_ptr + experts, ends - padded)
    total = tl.sum(padded, axis=0)
    tl.store(num_padded_ptr, total)
    for first in range(0, max_blocks, BLOCK_B):
        blocks = first + tl.arange(0, BLOCK_B)
        starts = blocks * BLOCK_M
        expert = tl.sum((ends[None, :] <= starts[:, None]).to(tl.int32), axis=1)
        expert = tl.where(starts < total, expert, -1)
        tl.store(block_expert_ptr + blocks, expert, mask=blocks < max_blocks)


@triton.jit
def _scatter_kernel(
    ids_ptr,
    chunk_base_ptr,
    expert_offset_ptr,
    sorted_pairs_ptr,
    num_pairs,
    expert_start,
    num_local,
    CHUNK: tl.constexpr,
    E_PAD: tl.constexpr,
):
    chunk = tl.program_id(0)
    pairs, local, valid = _local_experts(ids_ptr, chunk, num_pairs, expert_start, num_local, CHUNK)
    base = tl.load(chunk_base_ptr + chunk * E_PAD + local) + tl.load(expert_offset_ptr + local)
    order = tl.arange(0, CHUNK)
    earlier_same = (
        (local[None, :] == local[:, None]) & valid[None, :] & (order[None, :] < order[:, None])
    )
    rank = tl.sum(earlier_same.to(tl.int32), axis=1)
    tl.store(sorted_pairs_ptr + base + rank, pairs, mask=valid)


def align_block_m(num_pairs: int, num_local: int) -> int:
    """GEMM tile height: small when experts see few tokens (decode), larger for prefill."""
    per_expert = num_pairs / max(num_local, 1)
    return 16 if per_expert <= 16 else 32 if per_expert <= 32 else 64


def align_by_expert(
    topk_ids: torch.Tensor, num_local: int, expert_start: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_pairs [capacity] int32, block_expert [max_blocks] int32, num_padded [1] int32).

    sorted_pairs lists flattened pair indices (token * k + slot) grouped by local expert in
    pair order, each group padded with `num_pairs` up to a multiple of block_m; block_expert
    holds each tile's local expert (-1 past the end); num_padded = used length.
    """
    device = topk_ids.device
    ids = topk_ids.reshape(-1).contiguous()
    num_pairs = ids.numel()
    max_blocks = triton.cdiv(num_pairs, block_m) + num_local
    e_pad = max(triton.next_power_of_2(num_local), 2)
    num_chunks = max(triton.cdiv(num_pairs, ALIGN_CHUNK), 1)
    counts = torch.empty(num_chunks, e_pad, dtype=torch.int32, device=device)
    chunk_base = torch.empty_like(counts)
    expert_offset = torch.empty(e_pad, dtype=torch.int32, device=device)
    sorted_pairs = torch.full((max_blocks * block_m,), num_pairs, dtype=torch.int32, device=device)
    block_expert = torch.empty(max_blocks, dtype=torch.int32, device=device)
    num_padded = torch.empty(1, dtype=torch.int32, device=device)
    common = {"CHUNK": ALIGN_CHUNK, "E_PAD": e_pad}
    _count_kernel[(num_chunks,)](ids, counts, num_pairs, expert_start, num_local, **common)
    _offsets_kernel[(1,)](
        counts,
        chunk_base,
        expert_offset,
        block_expert,
        num_padded,
        num_chunks,
        max_blocks,
        BLOCK_M=block_m,
        E_PAD=e_pad,
        BLOCK_B=64,
    )
    _scatter_kernel[(num_chunks,)](
        ids, chunk_base, expert_offset, sorted_pairs, num_pairs, expert_start, num_local, **common
    )
    return sorted_pairs, block_expert, num_padded


def align_by_expert_ref(
    topk_ids: torch.Tensor, num_local: int, expert_start: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The torch reference: (used part of sorted_pairs, block_expert of used tiles, length)."""
    local = topk_ids.reshape(-1).long() - expert_start
    num_pairs = local.numel()
    pieces, experts = [], []
    for expert in range(num_local):
        pairs = torch.nonzero(local == expert).flatten()
        padded = -(-pairs.numel() // block_m) * block_m
        pad = torch.full((padded - pairs.numel(),), num_pairs, dtype=torch.long)
        pieces.append(torch.cat((pairs.cpu(), pad)))
        experts += [expert] * (padded // block_m)
    sorted_pairs = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)
    return sorted_pairs, torch.tensor(experts, dtype=torch.long), sorted_pairs.numel()


# --- grouped GEMMs -------------------------------------------------------------------------------
@triton.jit
def _weight_tile_t(
    w_ptr,
    scale_ptr,
    rows,
    row_ok,
    k0,
    K,
    stride_wn,
    stride_sn,
    IS_MXFP4: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Weight rows `rows` (output units) x inputs [k0, k0 + BLOCK_K) -> fp32 [BLOCK_K, BLOCK_N]."""
    if IS_MXFP4:
        byte_cols = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(
            w_ptr + rows[:, None] * stride_wn + byte_cols[None, :],
            mask=row_ok[:, None] & (byte_cols < K // 2)[None, :],
            other=0,
        )
        groups = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        scales = tl.load(
            scale_ptr + rows[:, None] * stride_sn + groups[None, :],
            mask=row_ok[:, None] & (groups < K // 32)[None, :],
            other=127,
        )
        return tl.trans(mxfp4_tile_to_f32(packed, scales, BLOCK_N, BLOCK_K))
    ks = k0 + tl.arange(0, BLOCK_K)
    tile = tl.load(
        w_ptr + rows[None, :] * stride_wn + ks[:, None],
        mask=row_ok[None, :] & (ks < K)[:, None],
        other=0.0,
    )
    return tile.to(tl.float32)


@triton.jit
def _tile_rows(sorted_pairs_ptr, block_expert_ptr, num_pairs, BLOCK_M: tl.constexpr):
    """(expert of this tile, its pair indices, which rows are real pairs)."""
    tile = tl.program_id(0)
    expert = tl.load(block_expert_ptr + tile)
    pairs = tl.load(sorted_pairs_ptr + tile * BLOCK_M + tl.arange(0, BLOCK_M))
    return expert, pairs, pairs < num_pairs


@triton.jit
def _gate_up_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    bias_ptr,
    sorted_pairs_ptr,
    block_expert_ptr,
    h_ptr,
    num_pairs,
    hidden,
    inter,
    stride_xt,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_be,
    stride_ht,
    swiglu_alpha,
    swiglu_limit,
    TOP_K: tl.constexpr,
    IS_MXFP4: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    expert, pairs, row_ok = _tile_rows(sorted_pairs_ptr, block_expert_ptr, num_pairs, BLOCK_M)
    if expert >= 0:
        dot_dtype = x_ptr.dtype.element_ty
        units = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        unit_ok = units < inter
        tokens = pairs // TOP_K
        w_ptr += expert.to(tl.int64) * stride_we
        scale_ptr += expert.to(tl.int64) * stride_se
        gate = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        up = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, hidden, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(
                x_ptr + tokens[:, None] * stride_xt + ks[None, :],
                mask=row_ok[:, None] & (ks < hidden)[None, :],
                other=0.0,
            ).to(tl.float32)
            x = x.to(dot_dtype)
            w_gate = _weight_tile_t(
                w_ptr, scale_ptr, 2 * units, unit_ok, k0, hidden, stride_wn, stride_sn,
                IS_MXFP4, BLOCK_N, BLOCK_K,
            )  # fmt: skip
            w_up = _weight_tile_t(
                w_ptr, scale_ptr, 2 * units + 1, unit_ok, k0, hidden, stride_wn, stride_sn,
                IS_MXFP4, BLOCK_N, BLOCK_K,
            )  # fmt: skip
            gate = tl.dot(x, w_gate.to(dot_dtype), gate, input_precision=DOT_PRECISION)
            up = tl.dot(x, w_up.to(dot_dtype), up, input_precision=DOT_PRECISION)
        bias_ptr += expert * stride_be
        gate += tl.load(bias_ptr + 2 * units, mask=unit_ok, other=0.0).to(tl.float32)[None, :]
        up += tl.load(bias_ptr + 2 * units + 1, mask=unit_ok, other=0.0).to(tl.float32)[None, :]
        # gpt-oss SwiGLU: gate clamped above, up clamped both ways, (up + 1)
        gate = tl.minimum(gate, swiglu_limit)
        up = tl.minimum(tl.maximum(up, -swiglu_limit), swiglu_limit)
        act = gate * tl.sigmoid(swiglu_alpha * gate) * (up + 1.0)
        tl.store(
            h_ptr + pairs[:, None].to(tl.int64) * stride_ht + units[None, :],
            act.to(h_ptr.dtype.element_ty),
            mask=row_ok[:, None] & unit_ok[None, :],
        )


@triton.jit
def _down_kernel(
    h_ptr,
    w_ptr,
    scale_ptr,
    bias_ptr,
    sorted_pairs_ptr,
    block_expert_ptr,
    pair_weights_ptr,
    y_ptr,
    num_pairs,
    hidden,
    inter,
    stride_ht,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_be,
    stride_yt,
    IS_MXFP4: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    expert, pairs, row_ok = _tile_rows(sorted_pairs_ptr, block_expert_ptr, num_pairs, BLOCK_M)
    if expert >= 0:
        dot_dtype = h_ptr.dtype.element_ty
        outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        out_ok = outs < hidden
        rows = pairs.to(tl.int64)
        w_ptr += expert.to(tl.int64) * stride_we
        scale_ptr += expert.to(tl.int64) * stride_se
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, inter, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            h = tl.load(
                h_ptr + rows[:, None] * stride_ht + ks[None, :],
                mask=row_ok[:, None] & (ks < inter)[None, :],
                other=0.0,
            ).to(tl.float32)
            w = _weight_tile_t(
                w_ptr, scale_ptr, outs, out_ok, k0, inter, stride_wn, stride_sn,
                IS_MXFP4, BLOCK_N, BLOCK_K,
            )  # fmt: skip
            acc = tl.dot(h.to(dot_dtype), w.to(dot_dtype), acc, input_precision=DOT_PRECISION)
        acc += tl.load(bias_ptr + expert * stride_be + outs, mask=out_ok, other=0.0).to(tl.float32)[
            None, :
        ]
        weight = tl.load(pair_weights_ptr + pairs, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(
            y_ptr + rows[:, None] * stride_yt + outs[None, :],
            (acc * weight[:, None]).to(y_ptr.dtype.element_ty),
            mask=row_ok[:, None] & out_ok[None, :],
        )


@triton.jit
def _combine_kernel(
    y_ptr,
    ids_ptr,
    out_ptr,
    hidden,
    expert_start,
    num_local,
    stride_yt,
    stride_ot,
    TOP_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < hidden
    acc = tl.zeros((BLOCK_H,), tl.float32)
    for slot in tl.static_range(TOP_K):
        pair = token * TOP_K + slot
        local = tl.load(ids_ptr + pair).to(tl.int32) - expert_start
        if (local >= 0) & (local < num_local):
            y = tl.load(y_ptr + pair.to(tl.int64) * stride_yt + cols, mask=col_ok, other=0.0)
            acc += y.to(tl.float32)
    tl.store(
        out_ptr + token.to(tl.int64) * stride_ot + cols,
        acc.to(out_ptr.dtype.element_ty),
        mask=col_ok,
    )


def _block_k(in_features: int, is_mxfp4: bool) -> int:
    block = min(64, max(16, triton.next_power_of_2(in_features)))
    return max(block, 32) if is_mxfp4 else block


def _weight_strides(
    weight: torch.Tensor, scales: torch.Tensor | None
) -> tuple[torch.Tensor, int, int, int, int]:
    """(scale tensor or a dummy, stride per expert and per output row of weight and scales).

    MXFP4 blocks [E, out, in/32, 16] are addressed as bytes [E, out, in/2]."""
    if scales is None:
        return weight, weight.stride(0), weight.stride(1), 0, 0
    return scales, weight.stride(0), weight.stride(1), scales.stride(0), scales.stride(1)


def moe_experts(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w1: torch.Tensor,
    w1_scales: torch.Tensor | None,
    b1: torch.Tensor,
    w2: torch.Tensor,
    w2_scales: torch.Tensor | None,
    b2: torch.Tensor,
    *,
    swiglu_alpha: float,
    swiglu_limit: float,
    expert_start: int = 0,
) -> torch.Tensor:
    """Same contract as kernels.moe.moe_experts: this rank's share of every token's output."""
    num_tokens, hidden = x.shape
    top_k = topk_ids.shape[1]
    num_local, inter = b1.shape[0], b1.shape[1] // 2
    out = torch.empty_like(x)
    if num_tokens == 0:
        return out
    is_mxfp4 = w1_scales is not None
    if (w2_scales is not None) != is_mxfp4:
        raise ValueError("moe_experts: w1 and w2 must both be MXFP4 (scales given) or both dense")
    x, w1, w2 = x.contiguous(), w1.contiguous(), w2.contiguous()
    b1, b2 = b1.contiguous(), b2.contiguous()
    ids = topk_ids.contiguous()
    pair_weights = topk_weights.reshape(-1).contiguous()
    num_pairs = ids.numel()
    block_m = align_block_m(num_pairs, num_local)
    sorted_pairs, block_expert, _ = align_by_expert(ids, num_local, expert_start, block_m)
    max_blocks = block_expert.numel()
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    h = torch.empty(num_pairs, inter, dtype=x.dtype, device=x.device)
    s1, w1_se, w1_sn, s1_se, s1_sn = _weight_strides(w1, w1_scales)
    block_n = min(64, max(16, triton.next_power_of_2(inter)))
    _gate_up_kernel[(max_blocks, triton.cdiv(inter, block_n))](
        x, w1, s1, b1, sorted_pairs, block_expert, h,
        num_pairs, hidden, inter,
        x.stride(0), w1_se, w1_sn, s1_se, s1_sn, b1.stride(0), h.stride(0),
        swiglu_alpha, swiglu_limit,
        TOP_K=top_k, IS_MXFP4=is_mxfp4, DOT_PRECISION=precision,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=_block_k(hidden, is_mxfp4),
    )  # fmt: skip
    y = torch.empty(num_pairs, hidden, dtype=x.dtype, device=x.device)
    s2, w2_se, w2_sn, s2_se, s2_sn = _weight_strides(w2, w2_scales)
    block_n = min(64, max(16, triton.next_power_of_2(hidden)))
    _down_kernel[(max_blocks, triton.cdiv(hidden, block_n))](
        h, w2, s2, b2, sorted_pairs, block_expert, pair_weights, y,
        num_pairs, hidden, inter,
        h.stride(0), w2_se, w2_sn, s2_se, s2_sn, b2.stride(0), y.stride(0),
        IS_MXFP4=is_mxfp4, DOT_PRECISION=precision,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=_block_k(inter, is_mxfp4),
    )  # fmt: skip
    block_h = min(1024, triton.next_power_of_2(hidden))
    _combine_kernel[(num_tokens, triton.cdiv(hidden, block_h))](
        y, ids, out, hidden, expert_start, num_local, y.stride(0), out.stride(0),
        TOP_K=top_k, BLOCK_H=block_h,
    )  # fmt: skip
    return out
