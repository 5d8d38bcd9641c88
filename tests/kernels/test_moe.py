"""Routing and the clamped-SwiGLU experts: formula, MXFP4 == dense, expert-parallel split."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.moe import moe_experts, moe_experts_grouped, moe_experts_ref, route
from oss_serve.kernels.mxfp4 import dequantize_mxfp4, quantize_mxfp4

pytestmark = pytest.mark.unit
ALPHA, LIMIT = 1.702, 0.8


def _experts(num_experts=6, hidden=32, inter=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(num_experts, 2 * inter, hidden, generator=g) * 0.3
    w2 = torch.randn(num_experts, hidden, inter, generator=g) * 0.3
    b1 = torch.randn(num_experts, 2 * inter, generator=g)
    b2 = torch.randn(num_experts, hidden, generator=g)
    return w1, b1, w2, b2


def naive_moe(x, weights, ids, w1, b1, w2, b2):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t].tolist(), ids[t].tolist(), strict=True):
            h = w1[e] @ x[t] + b1[e]
            gate, up = h[0::2].clamp(max=LIMIT), h[1::2].clamp(-LIMIT, LIMIT)
            out[t] += w * (w2[e] @ (gate * torch.sigmoid(ALPHA * gate) * (up + 1)) + b2[e])
    return out


def test_route_takes_top_k_logits_and_softmaxes_over_them_only():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    weights, ids = route(logits, 2)
    assert ids.tolist() == [[1, 3]]
    expected = torch.softmax(torch.tensor([3.0, 2.0]), 0)
    torch.testing.assert_close(weights[0], expected)


def test_experts_match_the_formula_and_mxfp4_matches_its_dense_twin():
    w1, b1, w2, b2 = _experts()
    x = torch.randn(7, 32)
    weights, ids = route(torch.randn(7, 6), 3)
    common = {"swiglu_alpha": ALPHA, "swiglu_limit": LIMIT}
    dense = moe_experts(x, weights, ids, w1, None, b1, w2, None, b2, **common)
    torch.testing.assert_close(
        dense, naive_moe(x, weights, ids, w1, b1, w2, b2), atol=1e-5, rtol=1e-5
    )
    (w1_blocks, w1_scales), (w2_blocks, w2_scales) = quantize_mxfp4(w1), quantize_mxfp4(w2)
    packed = moe_experts(
        x, weights, ids, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, **common
    )
    w1q, w2q = (
        dequantize_mxfp4(w1_blocks, w1_scales, torch.float32),
        dequantize_mxfp4(w2_blocks, w2_scales, torch.float32),
    )
    torch.testing.assert_close(
        packed, moe_experts(x, weights, ids, w1q, None, b1, w2q, None, b2, **common)
    )


def test_expert_parallel_halves_sum_to_the_whole():
    w1, b1, w2, b2 = _experts()
    x = torch.randn(9, 32)
    weights, ids = route(torch.randn(9, 6), 4)
    common = {"swiglu_alpha": ALPHA, "swiglu_limit": LIMIT}
    whole = moe_experts(x, weights, ids, w1, None, b1, w2, None, b2, **common)
    halves = [
        moe_experts(
            x, weights, ids, w1[s], None, b1[s], w2[s], None, b2[s], expert_start=s.start, **common
        )
        for s in (slice(0, 3), slice(3, 6))
    ]
    torch.testing.assert_close(halves[0] + halves[1], whole, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(halves[0], whole)  # each half really holds only its share


def test_the_grouped_torch_path_equals_the_reference():
    w1, b1, w2, b2 = _experts(num_experts=8)
    x = torch.randn(40, 32)
    weights, ids = route(torch.randn(40, 8), 4)
    ids[:5] = torch.tensor([7, 6, 5, 4])  # some tokens pick experts in decreasing order
    common = {"swiglu_alpha": ALPHA, "swiglu_limit": LIMIT}
    (w1_blocks, w1_scales), (w2_blocks, w2_scales) = quantize_mxfp4(w1), quantize_mxfp4(w2)
    for expert_slice in (slice(0, 8), slice(2, 5)):  # all experts, and an EP rank's share
        s = expert_slice
        for up, up_scales, down, down_scales in (
            (w1[s], None, w2[s], None),
            (w1_blocks[s], w1_scales[s], w2_blocks[s], w2_scales[s]),
        ):
            args = (x, weights, ids, up, up_scales, b1[s], down, down_scales, b2[s])
            expected = moe_experts_ref(*args, expert_start=s.start, **common)
            grouped = moe_experts_grouped(*args, expert_start=s.start, **common)
            torch.testing.assert_close(grouped, expected, atol=1e-6, rtol=1e-6)
