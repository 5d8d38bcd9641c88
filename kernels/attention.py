"""gpt-oss attention: GQA with a learned sink logit per head and an optional sliding window.

softmax over [q.k * sm_scale for the visible keys] + [sink_h]; the sink column has no value
vector, so it only drains probability mass. A query at absolute position p sees keys at
positions j <= p (and j > p - window on sliding layers).

Two layouts: `varlen_attention` attends among a flat batch's own new tokens (no cache:
training, parity); `paged_attention` attends over a paged KV cache
[2, num_blocks, block_size, kv_heads, head_dim] through per-sequence block tables, where the
queries are the last tokens of their sequences (query j of a sequence with q_len queries and
seq_len keys sits at position seq_len - q_len + j). `store_kv` writes new keys/values there.
On the CPU, fp32 paged attention runs the C kernel of kernels.cpu_attention; the torch paths
below serve other dtypes and machines without a compiler.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from . import cpu_attention
from .backend import use_triton

# bound on one chunk's score tensor (elements) when a sequence's queries are processed in chunks
_SCORES_PER_CHUNK = 1 << 24
# (first key position, end key position) -> (keys, values) [T, kv_heads, head_dim]
KeyFetcher = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


def store_kv(
    kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write key/value [N, kv_heads, head_dim] at flat slots (block * block_size + offset); -1 skips."""
    if use_triton(kv_cache, key, value, slot_mapping):
        from . import triton_kv

        triton_kv.store_kv(kv_cache, key, value, slot_mapping)
        return
    store_kv_ref(kv_cache, key, value, slot_mapping)


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
) -> torch.Tensor:
    """query [N, q_heads, head_dim] -> [N, q_heads, head_dim] over the cached keys."""
    implementation = paged_attention_torch
    if use_triton(query, kv_cache, block_table, seq_lens, query_start_loc, sinks):
        from . import triton_attention

        implementation = triton_attention.paged_attention
    else:
        if cpu_attention.supports(query, kv_cache, sinks):
            out = cpu_attention.paged_attention(
                query, kv_cache, block_table, seq_lens, query_start_loc, sinks,
                sm_scale=sm_scale, sliding_window=sliding_window,
            )  # fmt: skip
            if out is not None:
                return out
        if max_query_len == 1 and query.shape[0] == seq_lens.shape[0]:
            return paged_decode_torch(
                query, kv_cache, block_table, seq_lens, sinks,
                sm_scale=sm_scale, sliding_window=sliding_window,
            )  # fmt: skip
    return implementation(
        query,
        kv_cache,
        block_table,
        seq_lens,
        query_start_loc,
        sinks,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        max_query_len=max_query_len,
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
    """Causal attention within each sequence of a flat batch; q/k/v [N, heads, head_dim]."""
    implementation = varlen_attention_ref
    if use_triton(query, key, value, query_start_loc, sinks):
        from . import triton_attention

        implementation = triton_attention.varlen_attention
    return implementation(
        query,
        key,
        value,
        query_start_loc,
        sinks,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
    )


def paged_decode_torch(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    sinks: torch.Tensor,
    *,
    sm_scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """The torch (CPU) fast path for decode batches; same result as `paged_attention_ref`.

    Whole blocks are gathered (one index_select per K and V), and each KV head's queries
    (its GQA group) meet their keys in one batched matmul, so no key is copied per query head
    the way the broadcasting reference does.
    """
    block_size, kv_heads = kv_cache.shape[2], kv_cache.shape[-2]
    batch, q_heads, head_dim = query.shape
    group = q_heads // kv_heads
    block_ids, key_positions, first, lens = _decode_blocks(
        block_table, seq_lens, block_size, sliding_window
    )
    hidden = (key_positions >= lens[:, None]) | (key_positions < first[:, None])  # [B, T]
    compute = torch.promote_types(query.dtype, torch.float32)
    shape = (batch, key_positions.shape[1], kv_heads, head_dim)
    blocks = [kv_cache[i].reshape(-1, block_size, kv_heads, head_dim) for i in (0, 1)]
    keys = blocks[0].index_select(0, block_ids.flatten()).view(shape).to(compute)
    values = blocks[1].index_select(0, block_ids.flatten()).view(shape)
    values = values.masked_fill_(hidden[:, :, None, None], 0).to(compute)  # NaN must not leak
    q = query.to(compute).view(batch, kv_heads, group, head_dim)
    sink = sinks.to(compute).view(kv_heads, group, 1)
    out = torch.empty(batch, kv_heads, group, head_dim, dtype=compute, device=query.device)
    for head in range(kv_heads):
        scores = torch.bmm(q[:, head], keys[:, :, head].transpose(1, 2)) * sm_scale
        scores = scores.masked_fill(hidden[:, None, :], float("-inf"))
        with_sink = torch.cat((scores, sink[head].expand(batch, group, 1)), dim=-1)
        probs = torch.softmax(with_sink, dim=-1)[..., :-1]
        out[:, head] = torch.bmm(probs, values[:, :, head])
    return out.view(batch, q_heads, head_dim).to(query.dtype)


def paged_attention_torch(
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
) -> torch.Tensor:
    """The torch (CPU) path for a batch that mixes decodes with longer queries (chunked
    prefill): the one-query sequences run together through `paged_decode_torch`, only the
    others one by one through the reference. Same result as `paged_attention_ref`."""
    starts = query_start_loc.tolist()
    query_lens = [hi - lo for lo, hi in itertools.pairwise(starts)]
    decodes = [seq for seq, length in enumerate(query_lens) if length == 1]
    if not decodes or len(decodes) == len(query_lens):
        return paged_attention_ref(
            query, kv_cache, block_table, seq_lens, query_start_loc, sinks,
            sm_scale=sm_scale, sliding_window=sliding_window, max_query_len=max_query_len,
        )  # fmt: skip
    out = torch.empty_like(query)
    device = query.device
    decode_seqs = torch.tensor(decodes, device=device)
    decode_rows = torch.tensor([starts[seq] for seq in decodes], device=device)
    out[decode_rows] = paged_decode_torch(
        query[decode_rows], kv_cache, block_table[decode_seqs], seq_lens[decode_seqs], sinks,
        sm_scale=sm_scale, sliding_window=sliding_window,
    )  # fmt: skip
    others = [seq for seq, length in enumerate(query_lens) if length != 1]
    rows = torch.cat([torch.arange(starts[seq], starts[seq + 1], device=device) for seq in others])
    other_starts = [0]
    for seq in others:
        other_starts.append(other_starts[-1] + query_lens[seq])
    other_seqs = torch.tensor(others, device=device)
    out[rows] = paged_attention_ref(
        query[rows], kv_cache, block_table[other_seqs], seq_lens[other_seqs],
        torch.tensor(other_starts, dtype=query_start_loc.dtype, device=device), sinks,
        sm_scale=sm_scale, sliding_window=sliding_window, max_query_len=max_query_len,
    )  # fmt: skip
    return out


def _decode_blocks(
    block_table: torch.Tensor, seq_lens: torch.Tensor, block_size: int, sliding_window: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sequence's visible blocks, padded to one width: (block ids [B, nb], key positions
    [B, nb * block_size], first visible position [B], sequence length [B])."""
    lens = seq_lens.long()
    first = (
        torch.zeros_like(lens) if sliding_window is None else (lens - sliding_window).clamp(min=0)
    )
    first_block, last_block = first // block_size, (lens - 1).clamp(min=0) // block_size
    num_blocks = int((last_block - first_block).max()) + 1
    block_index = first_block[:, None] + torch.arange(num_blocks, device=lens.device)
    table_index = block_index.clamp(max=block_table.shape[1] - 1)
    block_ids = torch.gather(block_table.long(), 1, table_index).clamp(min=0)
    offsets = torch.arange(block_size, device=lens.device)
    key_positions = (block_index[:, :, None] * block_size + offsets).flatten(1)
    return block_ids, key_positions, first, lens


# --- torch references --------------------------------------------------------------------------
def store_kv_ref(
    kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    kv_heads, head_dim = kv_cache.shape[-2:]
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.all()):
        slots, key, value = slots[keep], key[keep], value[keep]
    for index, new in ((0, key), (1, value)):
        kv_cache[index].view(-1, kv_heads, head_dim).index_copy_(0, slots, new.to(kv_cache.dtype))


def paged_attention_ref(
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
) -> torch.Tensor:
    """Decode batches (one query per sequence) run as one batched gather + softmax;
    longer queries loop over sequences and chunks of queries."""
    if max_query_len == 1 and query.shape[0] == seq_lens.shape[0]:
        return _decode_ref(query, kv_cache, block_table, seq_lens, sinks, sm_scale, sliding_window)
    block_size = kv_cache.shape[2]
    keys = kv_cache[0].reshape(-1, *kv_cache.shape[-2:])
    values = kv_cache[1].reshape(-1, *kv_cache.shape[-2:])
    out = torch.empty_like(query)
    starts = query_start_loc.tolist()
    for seq, seq_len in enumerate(seq_lens.tolist()):
        table = block_table[seq].long()

        def fetch(
            lo: int, hi: int, table: torch.Tensor = table
        ) -> tuple[torch.Tensor, torch.Tensor]:
            positions = torch.arange(lo, hi, device=query.device)
            slots = table[positions // block_size].clamp(min=0) * block_size
            slots = slots + positions % block_size
            return keys[slots], values[slots]

        lo, hi = starts[seq], starts[seq + 1]
        out[lo:hi] = _attend_sequence(
            query[lo:hi], seq_len - (hi - lo), fetch, sinks, sm_scale, sliding_window
        )
    return out


def varlen_attention_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    query_start_loc: torch.Tensor,
    sinks: torch.Tensor,
    *,
    sm_scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    out = torch.empty_like(query)
    starts = query_start_loc.tolist()
    for lo, hi in itertools.pairwise(starts):
        seq_keys, seq_values = key[lo:hi], value[lo:hi]

        def fetch(
            k_lo: int, k_hi: int, ks: torch.Tensor = seq_keys, vs: torch.Tensor = seq_values
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return ks[k_lo:k_hi], vs[k_lo:k_hi]

        out[lo:hi] = _attend_sequence(query[lo:hi], 0, fetch, sinks, sm_scale, sliding_window)
    return out


def _attend_sequence(
    query: torch.Tensor,
    first_position: int,
    fetch: KeyFetcher,
    sinks: torch.Tensor,
    sm_scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """One sequence's queries (positions first_position...) in chunks that bound memory."""
    num_queries, num_heads = query.shape[:2]
    out = torch.empty_like(query)
    last_key = first_position + num_queries
    chunk = max(16, _SCORES_PER_CHUNK // max(1, num_heads * last_key))
    for q_lo in range(0, num_queries, chunk):
        q_hi = min(q_lo + chunk, num_queries)
        q_positions = torch.arange(
            first_position + q_lo, first_position + q_hi, device=query.device
        )
        k_lo = 0 if sliding_window is None else max(0, first_position + q_lo - sliding_window + 1)
        k_hi = first_position + q_hi
        k_positions = torch.arange(k_lo, k_hi, device=query.device)
        allowed = _visible(q_positions[:, None], k_positions[None, :], sliding_window)
        keys, values = fetch(k_lo, k_hi)
        out[q_lo:q_hi] = attend_ref(
            query[None, q_lo:q_hi], keys[None], values[None], allowed[None], sinks, sm_scale
        )[0]
    return out


def _decode_ref(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    sinks: torch.Tensor,
    sm_scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """One query per sequence: gather every sequence's visible blocks into one padded batch."""
    block_size = kv_cache.shape[2]
    block_ids, key_positions, first, lens = _decode_blocks(
        block_table, seq_lens, block_size, sliding_window
    )
    offsets = torch.arange(block_size, device=lens.device)
    slots = (block_ids[:, :, None] * block_size + offsets).flatten(1)
    keys = kv_cache[0].reshape(-1, *kv_cache.shape[-2:])[slots]
    values = kv_cache[1].reshape(-1, *kv_cache.shape[-2:])[slots]
    allowed = (key_positions < lens[:, None]) & (key_positions >= first[:, None])
    return attend_ref(query[:, None], keys, values, allowed[:, None], sinks, sm_scale)[:, 0]


def _visible(q_pos: torch.Tensor, k_pos: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    allowed = k_pos <= q_pos
    if sliding_window is not None:
        allowed = allowed & (k_pos > q_pos - sliding_window)
    return allowed


def attend_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor,
    sinks: torch.Tensor,
    sm_scale: float,
) -> torch.Tensor:
    """Dense sink attention: q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D], allowed [B, Tq, Tk] bool.

    Computed in fp32 (or wider). Keys no query may see are zeroed first, so garbage (even NaN) in
    unused cache slots cannot leak into the output.
    """
    batch, num_queries, q_heads, head_dim = query.shape
    kv_heads = key.shape[2]
    group = q_heads // kv_heads
    seen = allowed.any(dim=1)[:, :, None, None]
    value = torch.where(seen, value, torch.zeros((), dtype=value.dtype, device=value.device))
    compute = torch.promote_types(query.dtype, torch.float32)
    q = query.to(compute).reshape(batch, num_queries, kv_heads, group, head_dim)
    q = q.permute(0, 2, 3, 1, 4)
    k = key.to(compute).permute(0, 2, 1, 3)[:, :, None]
    v = value.to(compute).permute(0, 2, 1, 3)[:, :, None]
    scores = torch.matmul(q, k.transpose(-1, -2)) * sm_scale
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
    sink = sinks.to(compute).reshape(1, kv_heads, group, 1, 1).expand(batch, -1, -1, num_queries, 1)
    probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
    out = torch.matmul(probs, v)  # [B, Hkv, G, Tq, D]
    return out.permute(0, 3, 1, 2, 4).reshape(batch, num_queries, q_heads, head_dim).to(query.dtype)
