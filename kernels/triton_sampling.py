"""Top-k / top-p filtering in Triton without sorting (kernels.sampling.top_k_top_p).

Non-negative fp32 numbers order like their bit patterns read as int32, so each cut-off is
found by bisecting on the bits, one streaming pass over the row per bit (the row stays in
L2): the k-th largest value is the largest b with count(bits >= b) >= k, and the top-p
cut-off is the smallest b whose mass above it, G(b), is below top_p times the top-k mass.
Ties at a cut-off are resolved by token id (a running prefix count), as a stable
descending sort would. One program per row; sums of probability mass run in fp64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_bits(row_ptr, start, vocab, BLOCK_V: tl.constexpr):
    """(int32 bit patterns of a chunk with -1 past the end, the fp32 values, the offsets)."""
    offsets = start + tl.arange(0, BLOCK_V)
    ok = offsets < vocab
    values = tl.load(row_ptr + offsets, mask=ok, other=0.0)
    bits = values.to(tl.int32, bitcast=True) & 0x7FFFFFFF  # -0.0 sorts as 0.0
    return tl.where(ok, bits, -1), values, offsets


@triton.jit
def _count_at_least(row_ptr, vocab, threshold, BLOCK_V: tl.constexpr):
    count: tl.int32 = 0
    for start in range(0, vocab, BLOCK_V):
        bits, _, _ = _row_bits(row_ptr, start, vocab, BLOCK_V)
        count += tl.sum((bits >= threshold).to(tl.int32), axis=0)
    return count


@triton.jit
def _mass_above(row_ptr, vocab, threshold, BLOCK_V: tl.constexpr):
    mass = tl.cast(0.0, tl.float64)
    for start in range(0, vocab, BLOCK_V):
        bits, values, _ = _row_bits(row_ptr, start, vocab, BLOCK_V)
        mass += tl.sum(tl.where(bits > threshold, values, 0.0).to(tl.float64), axis=0)
    return mass


@triton.jit
def _kth_largest_bits(row_ptr, vocab, k, BLOCK_V: tl.constexpr):
    """The bits of the k-th largest value: the largest b with count(bits >= b) >= k."""
    kth: tl.int32 = 0
    for i in range(31):
        candidate = kth | (1 << (30 - i))
        if _count_at_least(row_ptr, vocab, candidate, BLOCK_V) >= k:
            kth = candidate
    return kth


@triton.jit
def _top_p_bits(row_ptr, vocab, kth, top_k_mass, limit, BLOCK_V: tl.constexpr):
    """The smallest b with G(b) < limit, where G(b) = top-k mass above b (= the whole
    top-k mass for any b below the k-th largest value)."""
    cut: tl.int32 = 0
    for i in range(31):
        bit = 1 << (30 - i)
        candidate = cut | (bit - 1)  # the largest pattern with this bit clear
        above = top_k_mass
        if candidate >= kth:
            above = _mass_above(row_ptr, vocab, candidate, BLOCK_V)
        if above >= limit:
            cut = cut | bit
    return cut


@triton.jit
def _top_k_top_p_kernel(
    probs_ptr,
    out_ptr,
    top_k_ptr,
    top_p_ptr,
    vocab,
    stride_pr,
    stride_or,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = probs_ptr + row * stride_pr
    k = tl.load(top_k_ptr + row).to(tl.int32)
    top_p = tl.load(top_p_ptr + row).to(tl.float32)
    k = tl.where((k <= 0) | (k > vocab), vocab, k)
    k = tl.where(top_p <= 0.0, 1, k)  # nothing within the mass: the best token alone
    use_top_p = (top_p > 0.0) & (top_p < 1.0)

    # top-k: everything above the k-th largest value, and the first `quota_k` ties at it
    kth = k * 0  # an int32 scalar (a plain 0 would stay a Python int in the interpreter)
    if k < vocab:
        kth = _kth_largest_bits(row_ptr, vocab, k, BLOCK_V)
    quota_k = k - _count_at_least(row_ptr, vocab, kth + 1, BLOCK_V)
    kth_value = kth.to(tl.float32, bitcast=True).to(tl.float64)
    top_k_mass = _mass_above(row_ptr, vocab, kth, BLOCK_V) + kth_value * quota_k

    # top-p: everything above the cut, and ties at it while the mass before them is < limit
    cut = kth
    above_cut = top_k_mass
    limit = top_p.to(tl.float64) * top_k_mass
    if use_top_p:
        cut = _top_p_bits(row_ptr, vocab, kth, top_k_mass, limit, BLOCK_V)
        above_cut = _mass_above(row_ptr, vocab, cut, BLOCK_V)
    cut_value = cut.to(tl.float32, bitcast=True).to(tl.float64)

    ties_k: tl.int32 = 0
    ties_cut: tl.int32 = 0
    for start in range(0, vocab, BLOCK_V):
        bits, values, offsets = _row_bits(row_ptr, start, vocab, BLOCK_V)
        at_kth = (bits == kth).to(tl.int32)
        rank_k = ties_k + tl.cumsum(at_kth, axis=0) - at_kth
        keep = (bits > kth) | ((at_kth == 1) & (rank_k < quota_k))
        at_cut = ((bits == cut) & keep).to(tl.int32)
        rank_cut = ties_cut + tl.cumsum(at_cut, axis=0) - at_cut
        if use_top_p:
            mass_before = above_cut + cut_value * rank_cut.to(tl.float64)
            keep = keep & ((bits > cut) | ((at_cut == 1) & (mass_before < limit)))
        ties_k += tl.sum(at_kth, axis=0)
        ties_cut += tl.sum(at_cut, axis=0)
        tl.store(
            out_ptr + row * stride_or + offsets,
            tl.where(keep, values, 0.0),
            mask=offsets < vocab,
        )


def top_k_top_p(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Same contract as kernels.sampling.top_k_top_p (computed on fp32 probabilities)."""
    rows, vocab = probs.shape
    source = probs.float()
    source = source if source.stride(-1) == 1 else source.contiguous()
    out = torch.empty_like(source)
    if rows:
        _top_k_top_p_kernel[(rows,)](
            source,
            out,
            top_k.to(device=probs.device, dtype=torch.int32).contiguous(),
            top_p.to(device=probs.device, dtype=torch.float32).contiguous(),
            vocab,
            source.stride(0),
            out.stride(0),
            BLOCK_V=min(4096, triton.next_power_of_2(vocab)),
        )
    return out.to(probs.dtype)
