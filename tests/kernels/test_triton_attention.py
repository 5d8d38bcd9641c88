"""Paged / varlen sink attention in Triton (interpreter) against the torch reference."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.attention import (
    paged_attention,
    paged_attention_ref,
    store_kv_ref,
    varlen_attention,
    varlen_attention_ref,
)

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("triton_interpreter")]
TRASH_BLOCK = 0  # all NaN; sliding-window table entries that fell out of the window point here


def _batch(q_lens, seq_lens, *, q_heads, kv_heads, head_dim, block_size, window, dtype, seed):
    """Queries, a NaN-filled paged cache with every sequence's keys in scattered blocks,
    and the metadata (sliding tables point out-of-window blocks at the NaN trash block)."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 1
    cache = torch.full((2, num_blocks, block_size, kv_heads, head_dim), float("nan"), dtype=dtype)
    physical = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    table = torch.full((len(seq_lens), max(blocks_per_seq) + 1), -1, dtype=torch.int32)
    for seq, (seq_len, q_len) in enumerate(zip(seq_lens, q_lens, strict=True)):
        blocks = [physical.pop() for _ in range(blocks_per_seq[seq])]
        table[seq, : len(blocks)] = torch.tensor(blocks)
        positions = torch.arange(seq_len)
        slots = table[seq, positions // block_size].long() * block_size + positions % block_size
        k, v = torch.randn(2, seq_len, kv_heads, head_dim, generator=g).to(dtype)
        store_kv_ref(cache, k, v, slots)
        if window is not None:
            first_visible = max(0, seq_len - q_len - window + 1)
            table[seq, : first_visible // block_size] = TRASH_BLOCK
    starts = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    starts[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    query = torch.randn(sum(q_lens), q_heads, head_dim, generator=g).to(dtype)
    sinks = torch.randn(q_heads, generator=g) * 2
    return query, cache, table, torch.tensor(seq_lens, dtype=torch.int32), starts, sinks


def _check(q_lens, seq_lens, *, window, num_splits=None, dtype=torch.float32, atol=2e-5, **shape):
    args = _batch(q_lens, seq_lens, window=window, dtype=dtype, seed=len(seq_lens), **shape)
    options = {"sm_scale": shape["head_dim"] ** -0.5, "sliding_window": window}
    options["max_query_len"] = max(q_lens)
    if num_splits is None:
        out = paged_attention(*args, **options)  # the dispatcher, Triton path forced
    else:
        from oss_serve.kernels import triton_attention

        out = triton_attention.paged_attention(*args, num_splits=num_splits, **options)
    fp32_args = [t.float() if t.is_floating_point() else t for t in args]
    expected = paged_attention_ref(*fp32_args, **options)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=atol)


GPT_OSS_GROUP = {"q_heads": 8, "kv_heads": 1, "head_dim": 64, "block_size": 16}
SMALL_HEADS = {"q_heads": 4, "kv_heads": 2, "head_dim": 16, "block_size": 4}
# decode lengths around the window (15, 16, 17 with window 16) and over many blocks (70)
DECODE_LENS = [1, 15, 16, 17, 70]


@pytest.mark.parametrize("window", [None, 16])
def test_decode_one_query_per_sequence_with_ragged_lengths(window):
    _check([1] * len(DECODE_LENS), DECODE_LENS, window=window, **SMALL_HEADS)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_split_k_gives_the_same_result_as_one_pass(num_splits):
    lens = [3, 40, 150]
    _check([1] * len(lens), lens, window=None, num_splits=num_splits, **GPT_OSS_GROUP)


def test_decode_split_k_within_a_sliding_window():
    lens = [5, 128, 129, 200]
    _check([1] * len(lens), lens, window=128, num_splits=4, **GPT_OSS_GROUP)


@pytest.mark.parametrize("window", [None, 8])
def test_prefill_and_extend_with_cached_prefixes_in_one_launch(window):
    # a fresh prompt, a decode step, a chunk after a cached prefix that ends mid-block
    q_lens, prefix_lens = [6, 1, 13], [0, 21, 30]
    seq_lens = [q + p for q, p in zip(q_lens, prefix_lens, strict=True)]
    _check(q_lens, seq_lens, window=window, **SMALL_HEADS)


def test_prefill_with_gpt_oss_heads_and_window():
    q_lens, prefix_lens = [20, 3], [0, 140]
    seq_lens = [q + p for q, p in zip(q_lens, prefix_lens, strict=True)]
    _check(q_lens, seq_lens, window=128, **GPT_OSS_GROUP)


def test_fp16_cache_and_queries_stay_within_half_precision():
    q_lens, prefix_lens = [4, 1], [9, 33]
    seq_lens = [q + p for q, p in zip(q_lens, prefix_lens, strict=True)]
    _check(q_lens, seq_lens, window=16, dtype=torch.float16, atol=2e-3, **SMALL_HEADS)


def test_odd_head_dim_and_group_are_padded_correctly():
    shape = {"q_heads": 6, "kv_heads": 2, "head_dim": 8, "block_size": 4}
    _check([3, 1], [3, 11], window=None, **shape)


@pytest.mark.parametrize("window", [None, 5])
def test_varlen_attention_without_a_cache(window):
    g = torch.Generator().manual_seed(5)
    lens = [1, 11, 19]
    starts = torch.tensor([0, 1, 12, 31], dtype=torch.int32)
    q = torch.randn(sum(lens), 4, 16, generator=g)
    k, v = torch.randn(2, sum(lens), 2, 16, generator=g)
    sinks = torch.randn(4, generator=g)
    options = {"sm_scale": 0.25, "sliding_window": window}
    out = varlen_attention(q, k, v, starts, sinks, **options)
    expected = varlen_attention_ref(q, k, v, starts, sinks, **options)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
