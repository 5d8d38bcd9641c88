"""Batched LoRA: the torch reference against the merged weights, the Triton kernel against it."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.lora import LoRAWeights, add_lora, add_lora_ref

pytestmark = pytest.mark.unit


def _adapters(slots: int, rank: int, in_features: int, out_features: int, dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    lora_a = torch.randn(slots, rank, in_features, generator=g).to(dtype)
    lora_b = torch.randn(slots, out_features, rank, generator=g).to(dtype)
    lora_a[1, rank // 2 :] = 0  # slot 1 holds an adapter of half the padded rank
    lora_b[1, :, rank // 2 :] = 0
    scales = torch.tensor([0.5, 2.0, 0.0, 1.0])[:slots]
    return LoRAWeights(lora_a, lora_b, scales)


def test_each_token_gets_its_own_adapters_merged_weight_and_base_tokens_are_untouched():
    weights = _adapters(4, 8, 24, 40, torch.float64, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 24, generator=g, dtype=torch.float64)
    base = torch.randn(40, 24, generator=g, dtype=torch.float64)
    slots = torch.tensor([0, -1, 1, 1, 3, -1, 2, 0, 3])
    y = add_lora_ref(x @ base.t(), x, weights, slots)
    for row, slot in enumerate(slots.tolist()):
        merged = base.clone()
        if slot >= 0:
            merged += weights.scales[slot].double() * weights.lora_b[slot] @ weights.lora_a[slot]
        torch.testing.assert_close(y[row], merged @ x[row])


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("rank", "in_features", "out_features"), [(8, 24, 40), (16, 200, 70)])
def test_triton_kernel_matches_the_torch_reference(dtype, rank, in_features, out_features):
    weights = _adapters(4, rank, in_features, out_features, dtype, seed=rank)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(11, in_features, generator=g).to(dtype) / 4
    y = torch.randn(11, out_features, generator=g).to(dtype)
    slots = torch.tensor([3, -1, 1, 0, 0, 2, -1, 1, 3, 3, 0], dtype=torch.int32)
    expected = add_lora_ref(y.clone().float(), x.float(), weights_as(weights, torch.float32), slots)
    got = add_lora(y.clone(), x, weights, slots)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)
    assert torch.equal(got[1], y[1]) and torch.equal(got[6], y[6])  # base rows unchanged


def weights_as(weights: LoRAWeights, dtype) -> LoRAWeights:
    return LoRAWeights(weights.lora_a.to(dtype), weights.lora_b.to(dtype), weights.scales)
