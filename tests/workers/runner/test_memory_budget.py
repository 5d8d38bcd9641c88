"""The KV budget a worker computes: the same arithmetic the capacity planner calls."""

from __future__ import annotations

import pytest

from oss_serve.workers.runner.memory_budget import kv_cache_budget_bytes, step_activation_bytes

pytestmark = pytest.mark.unit

GIB = 1 << 30


def test_budget_is_the_utilization_share_minus_what_is_used_and_the_step():
    budget = kv_cache_budget_bytes(
        total_bytes=80 * GIB,
        used_bytes=14 * GIB,
        gpu_memory_utilization=0.9,
        activation_bytes=2 * GIB,
    )
    assert budget == int(80 * GIB * 0.9) - 16 * GIB


def test_budget_never_goes_below_zero():
    assert (
        kv_cache_budget_bytes(
            total_bytes=16 * GIB,
            used_bytes=15 * GIB,
            gpu_memory_utilization=0.9,
            activation_bytes=1,
        )
        == 0
    )


def test_step_activations_grow_with_tokens_and_with_sampled_rows():
    shape = {"hidden_size": 2880, "intermediate_size": 2880, "vocab_size": 201088, "dtype_bytes": 2}
    small = step_activation_bytes(max_num_batched_tokens=2048, max_num_seqs=256, **shape)
    more_tokens = step_activation_bytes(max_num_batched_tokens=8192, max_num_seqs=256, **shape)
    more_rows = step_activation_bytes(max_num_batched_tokens=2048, max_num_seqs=1024, **shape)
    assert small < more_tokens and small < more_rows
    # 256 rows of fp32 logits, three live copies
    assert more_tokens - small == 6144 * 2 * 2880 * 8 * 2
    assert small - 2048 * 2 * 2880 * 8 * 2 == 256 * 201088 * 4 * 3
