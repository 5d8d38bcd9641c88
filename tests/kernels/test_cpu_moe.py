"""The C experts kernel for small CPU batches against the torch reference."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels import cpu_moe, native_build
from oss_serve.kernels.moe import moe_experts, moe_experts_ref, route_ref
from oss_serve.kernels.mxfp4 import quantize_mxfp4

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not native_build.native_kernels_enabled(), reason="native kernels off"),
]
SWIGLU = {"swiglu_alpha": 1.702, "swiglu_limit": 7.0}


def _experts(num_experts, hidden, inter, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(num_experts, 2 * inter, hidden, generator=g) * 0.1,
        torch.randn(num_experts, 2 * inter, generator=g),
        torch.randn(num_experts, hidden, inter, generator=g) * 0.1,
        torch.randn(num_experts, hidden, generator=g),
    )


@pytest.mark.parametrize(
    ("tokens", "num_experts", "top_k", "hidden", "inter"),
    [(1, 8, 2, 256, 256), (16, 8, 2, 256, 256), (37, 32, 4, 64, 96), (120, 4, 4, 30, 18)],
)
@torch.inference_mode()
def test_the_kernel_equals_the_reference(tokens, num_experts, top_k, hidden, inter):
    w1, b1, w2, b2 = _experts(num_experts, hidden, inter)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, hidden, generator=g) * 3  # large enough to hit the SwiGLU clamps
    weights, ids = route_ref(torch.randn(tokens, num_experts, generator=g), top_k)
    assert cpu_moe.supports(x, w1, None)
    out = cpu_moe.moe_experts(x, weights, ids, w1, b1, w2, b2, expert_start=0, **SWIGLU)
    expected = moe_experts_ref(x, weights, ids, w1, None, b1, w2, None, b2, **SWIGLU)
    assert out is not None
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)  # fp32, another sum order
    # the public entry point takes the kernel for this batch
    torch.testing.assert_close(
        moe_experts(x, weights, ids, w1, None, b1, w2, None, b2, **SWIGLU), out, atol=0, rtol=0
    )


@torch.inference_mode()
def test_an_expert_parallel_rank_adds_only_its_experts():
    w1, b1, w2, b2 = _experts(8, 64, 32)
    x = torch.randn(9, 64)
    weights, ids = route_ref(torch.randn(9, 8), 2)
    halves = [
        cpu_moe.moe_experts(
            x, weights, ids, w1[lo:hi], b1[lo:hi], w2[lo:hi], b2[lo:hi], expert_start=lo, **SWIGLU
        )
        for lo, hi in ((0, 4), (4, 8))
    ]
    assert halves[0] is not None and halves[1] is not None
    whole = moe_experts_ref(x, weights, ids, w1, None, b1, w2, None, b2, **SWIGLU)
    torch.testing.assert_close(halves[0] + halves[1], whole, atol=1e-5, rtol=1e-5)


def test_it_leaves_what_it_does_not_handle_to_torch():
    w1, _, _, _ = _experts(4, 64, 32)
    x = torch.randn(3, 64)
    blocks, scales = quantize_mxfp4(w1)
    assert not cpu_moe.supports(x, blocks, scales)  # MXFP4 weights
    assert not cpu_moe.supports(x.half(), w1.half(), None)
    assert not cpu_moe.supports(torch.randn(cpu_moe.MAX_TOKENS + 1, 64), w1, None)
    with torch.enable_grad():
        assert not cpu_moe.supports(x, w1, None)  # training keeps autograd's path
