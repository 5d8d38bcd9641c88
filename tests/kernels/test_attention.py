"""Sink attention: the torch paths against a naive per-query, per-head formula and each other."""

from __future__ import annotations

import math

import pytest
import torch

from oss_serve.kernels.attention import (
    paged_attention,
    paged_attention_ref,
    paged_attention_torch,
    paged_decode_torch,
    store_kv,
    varlen_attention,
)

pytestmark = pytest.mark.unit
SCALE = 0.125


def naive_attention(q, k, v, sinks, window, first_position=0):
    """out[i, h] = sum_j p_j v_j, p_j = e^{s_j} / (e^{sink_h} + sum_l e^{s_l}), j visible to i."""
    num_q, q_heads, _ = q.shape
    group = q_heads // k.shape[1]
    out = torch.zeros(num_q, q_heads, q.shape[-1], dtype=torch.float64)
    for i in range(num_q):
        pos = first_position + i
        visible = [j for j in range(pos + 1) if window is None or j > pos - window]
        for h in range(q_heads):
            logits = [float(q[i, h] @ k[j, h // group]) * SCALE for j in visible]
            denominator = math.exp(float(sinks[h])) + sum(math.exp(s) for s in logits)
            for j, s in zip(visible, logits, strict=True):
                out[i, h] += math.exp(s) / denominator * v[j, h // group].double()
    return out.float()


def _qkv(num_tokens, q_heads=4, kv_heads=2, head_dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(num_tokens, q_heads, head_dim, generator=g),
        torch.randn(num_tokens, kv_heads, head_dim, generator=g),
        torch.randn(num_tokens, kv_heads, head_dim, generator=g),
        torch.randn(q_heads, generator=g),
    )


@pytest.mark.parametrize("window", [None, 3])
def test_varlen_attention_matches_the_formula_per_sequence(window):
    q, k, v, sinks = _qkv(11)
    starts = torch.tensor([0, 4, 11], dtype=torch.int32)
    out = varlen_attention(q, k, v, starts, sinks, sm_scale=SCALE, sliding_window=window)
    for lo, hi in ((0, 4), (4, 11)):
        expected = naive_attention(q[lo:hi], k[lo:hi], v[lo:hi], sinks, window)
        torch.testing.assert_close(out[lo:hi], expected, atol=1e-5, rtol=1e-5)


def _paged_cache(k, v, seq_lens, block_size, seed=0):
    """A NaN-filled cache with each sequence's keys in random, scattered blocks."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    physical = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    table = torch.zeros(len(seq_lens), max(blocks_per_seq) + 1, dtype=torch.int32)  # pad = 0
    cache = torch.full((2, num_blocks, block_size, *k.shape[1:]), float("nan"))
    offset = 0
    for seq, n in enumerate(seq_lens):
        table[seq, : blocks_per_seq[seq]] = torch.tensor(
            physical[offset : offset + blocks_per_seq[seq]]
        )
        offset += blocks_per_seq[seq]
        pos = torch.arange(n)
        slots = table[seq, pos // block_size].long() * block_size + pos % block_size
        store_kv(cache, k[seq, :n], v[seq, :n], slots)
    return cache, table


@pytest.mark.parametrize("window", [None, 5])
def test_paged_decode_and_chunked_queries_match_the_formula(window):
    seq_lens = [9, 1, 14]
    per_seq = [_qkv(n, seed=s) for s, n in enumerate(seq_lens)]
    longest = max(seq_lens)
    k = torch.stack(
        [torch.nn.functional.pad(x[1], (0, 0, 0, 0, 0, longest - len(x[1]))) for x in per_seq]
    )
    v = torch.stack(
        [torch.nn.functional.pad(x[2], (0, 0, 0, 0, 0, longest - len(x[2]))) for x in per_seq]
    )
    sinks = per_seq[0][3]
    cache, table = _paged_cache(k, v, seq_lens, block_size=4)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    for q_lens in ([1, 1, 1], [3, 1, 6]):  # decode (batched path) and chunked prefill (loop path)
        q = torch.cat([x[0][n - ql :] for x, n, ql in zip(per_seq, seq_lens, q_lens, strict=True)])
        starts = torch.zeros(4, dtype=torch.int32)
        starts[1:] = torch.cumsum(torch.tensor(q_lens), 0)
        out = paged_attention(
            q,
            cache,
            table,
            lens,
            starts,
            sinks,
            sm_scale=SCALE,
            sliding_window=window,
            max_query_len=max(q_lens),
        )
        assert out.isfinite().all()
        for seq, (n, ql) in enumerate(zip(seq_lens, q_lens, strict=True)):
            expected = naive_attention(
                per_seq[seq][0][n - ql :], k[seq, :n], v[seq, :n], sinks, window, n - ql
            )
            torch.testing.assert_close(
                out[starts[seq] : starts[seq + 1]], expected, atol=1e-5, rtol=1e-5
            )


def test_batched_decode_equals_the_per_sequence_loop():
    seq_lens = [30, 7, 18, 1]
    k = torch.randn(4, 30, 2, 8)
    v = torch.randn(4, 30, 2, 8)
    cache, table = _paged_cache(k, v, seq_lens, block_size=4, seed=3)
    q = torch.randn(4, 4, 8)
    sinks = torch.randn(4)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    starts = torch.arange(5, dtype=torch.int32)
    for window in (None, 8):
        kwargs = {"sm_scale": SCALE, "sliding_window": window}
        batched = paged_attention_ref(
            q, cache, table, lens, starts, sinks, max_query_len=1, **kwargs
        )
        # max_query_len > 1 forces the per-sequence loop
        looped = paged_attention_ref(
            q, cache, table, lens, starts, sinks, max_query_len=2, **kwargs
        )
        torch.testing.assert_close(batched, looped, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_torch_decode_path_equals_the_reference(dtype):
    torch.manual_seed(11)
    seq_lens = [37, 1, 16, 17, 60, 5]
    k = torch.randn(6, 60, 2, 16)
    v = torch.randn(6, 60, 2, 16)
    cache, table = _paged_cache(k, v, seq_lens, block_size=8, seed=5)  # NaN outside the keys
    q = torch.randn(6, 8, 16)
    sinks = torch.randn(8)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    starts = torch.arange(7, dtype=torch.int32)
    for window in (None, 1, 9, 16):
        kwargs = {"sm_scale": SCALE, "sliding_window": window}
        expected = paged_attention_ref(
            q.to(dtype), cache.to(dtype), table, lens, starts, sinks, max_query_len=1, **kwargs
        )
        fast = paged_decode_torch(q.to(dtype), cache.to(dtype), table, lens, sinks, **kwargs)
        assert fast.dtype == dtype and fast.isfinite().all()
        # both accumulate in fp32; fp16 outputs may then round one fp16 ulp apart (2^-10)
        rtol = 1e-5 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(fast, expected, atol=1e-6, rtol=rtol)


def test_a_mixed_batch_runs_its_decodes_together_with_the_reference_result():
    torch.manual_seed(12)
    seq_lens, q_lens = [37, 1, 16, 17, 60, 5], [1, 1, 5, 1, 12, 1]
    k, v = torch.randn(6, 60, 2, 16), torch.randn(6, 60, 2, 16)
    cache, table = _paged_cache(k, v, seq_lens, block_size=8, seed=6)  # NaN outside the keys
    q = torch.randn(sum(q_lens), 8, 16)
    sinks = torch.randn(8)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    starts = torch.zeros(7, dtype=torch.int32)
    starts[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    for window in (None, 1, 9):
        kwargs = {"sm_scale": SCALE, "sliding_window": window, "max_query_len": 12}
        expected = paged_attention_ref(q, cache, table, lens, starts, sinks, **kwargs)
        mixed = paged_attention_torch(q, cache, table, lens, starts, sinks, **kwargs)
        assert mixed.isfinite().all()
        torch.testing.assert_close(mixed, expected, atol=1e-6, rtol=1e-5)


def test_store_kv_skips_slots_marked_minus_one():
    cache = torch.zeros(2, 2, 4, 1, 2)
    key = torch.ones(3, 1, 2)
    store_kv(cache, key, 2 * key, torch.tensor([5, -1, 0]))
    flat = cache.reshape(2, 8, 2)
    assert flat[0, 5].tolist() == [1.0, 1.0] and flat[1, 0].tolist() == [2.0, 2.0]
    assert int((flat != 0).any(-1).sum()) == 4  # 2 slots x (K, V), nothing else written
