"""The Triton MoE (interpreter) against the torch reference: routing, alignment, experts."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.moe import moe_experts, moe_experts_ref, route, route_ref
from oss_serve.kernels.mxfp4 import quantize_mxfp4

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("triton_interpreter")]
SWIGLU = {"swiglu_alpha": 1.702, "swiglu_limit": 7.0}


def _experts(num_experts, hidden, inter, seed):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(num_experts, 2 * inter, hidden, generator=g) * 0.3,
        torch.randn(num_experts, 2 * inter, generator=g) * 2,
        torch.randn(num_experts, hidden, inter, generator=g) * 0.3,
        torch.randn(num_experts, hidden, generator=g),
    )


@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k"), [(1, 32, 4), (37, 128, 4)])
def test_route_picks_the_same_experts_and_weights_as_torch(num_tokens, num_experts, top_k):
    g = torch.Generator().manual_seed(num_tokens)
    logits = torch.randn(num_tokens, num_experts, generator=g)
    weights, ids = route(logits, top_k)
    expected_weights, expected_ids = route_ref(logits, top_k)
    assert torch.equal(ids, expected_ids) and ids.dtype == torch.int64
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-6)


def test_alignment_groups_pairs_by_expert_in_order_and_pads_each_group():
    from oss_serve.kernels.triton_moe import align_by_expert, align_by_expert_ref

    g = torch.Generator().manual_seed(3)
    # 300 pairs over experts 0..11 except 5 (empty); this rank holds experts 4..11
    ids = torch.randint(0, 11, (75, 4), generator=g)
    ids[ids >= 5] += 1
    for start, local, block_m in ((0, 12, 16), (4, 8, 32)):
        sorted_pairs, block_expert, num_padded = align_by_expert(ids, local, start, block_m)
        expected_pairs, expected_experts, length = align_by_expert_ref(ids, local, start, block_m)
        assert int(num_padded) == length
        assert torch.equal(sorted_pairs[:length].long(), expected_pairs)
        tiles = length // block_m
        assert torch.equal(block_expert[:tiles].long(), expected_experts)
        assert bool((block_expert[tiles:] == -1).all())  # surplus tiles exit early


CASES = {
    # name: (tokens, experts, local slice, hidden, inter)
    "one token": (1, 8, slice(0, 8), 64, 32),
    "ragged batch, every expert chosen": (45, 8, slice(0, 8), 32, 64),
    "expert-parallel rank with empty experts": (6, 16, slice(8, 16), 64, 32),
}


@pytest.mark.parametrize("weights_format", ["dense", "mxfp4"])
@pytest.mark.parametrize("case", list(CASES))
def test_experts_match_the_torch_reference(case, weights_format):
    num_tokens, num_experts, local, hidden, inter = CASES[case]
    g = torch.Generator().manual_seed(num_tokens)
    x = torch.randn(num_tokens, hidden, generator=g)
    logits = torch.randn(num_tokens, num_experts, generator=g)
    if case.startswith("expert-parallel"):
        logits[:, 8:11] -= 100  # local experts 8, 9, 10 stay empty
        logits[0, :4] += 100  # token 0 has no local expert at all
    weights, ids = route_ref(logits, 4)
    if case.startswith("ragged"):
        assert set(ids.flatten().tolist()) == set(range(num_experts))
    w1, b1, w2, b2 = (t[local] for t in _experts(num_experts, hidden, inter, seed=1))
    s1 = s2 = None
    if weights_format == "mxfp4":
        (w1, s1), (w2, s2) = quantize_mxfp4(w1), quantize_mxfp4(w2)
    args = (x, weights, ids, w1, s1, b1, w2, s2, b2)
    out = moe_experts(*args, expert_start=local.start, **SWIGLU)
    expected = moe_experts_ref(*args, expert_start=local.start, **SWIGLU)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_fp16_activations_stay_within_half_precision_of_the_fp32_reference():
    num_tokens, hidden, inter = 19, 64, 64
    g = torch.Generator().manual_seed(7)
    x = torch.randn(num_tokens, hidden, generator=g)
    weights, ids = route_ref(torch.randn(num_tokens, 8, generator=g), 4)
    w1, b1, w2, b2 = _experts(8, hidden, inter, seed=2)
    (q1, s1), (q2, s2) = quantize_mxfp4(w1), quantize_mxfp4(w2)
    half = [t.half() for t in (x, weights, b1, b2)]
    out = moe_experts(half[0], half[1], ids, q1, s1, half[2], q2, s2, half[3], **SWIGLU)
    expected = moe_experts_ref(
        *(t.float() for t in (half[0], half[1])), ids, q1, s1, half[2].float(), q2, s2,
        half[3].float(), **SWIGLU,
    )  # fmt: skip
    assert out.dtype == torch.float16
    scale = expected.abs().max()
    assert (out.float() - expected).abs().max() <= 4e-3 * scale


def test_no_tokens_gives_an_empty_output():
    w1, b1, w2, b2 = _experts(4, 32, 32, seed=0)
    x = torch.empty(0, 32)
    out = moe_experts(
        x, torch.empty(0, 2), torch.empty(0, 2, dtype=torch.long), w1, None, b1, w2, None, b2,
        **SWIGLU,
    )  # fmt: skip
    assert out.shape == (0, 32)
