"""MXFP4 encode/decode against transformers' decoder and against brute force."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.mxfp4 import FP4_VALUES, dequantize_mxfp4, quantize_mxfp4

pytestmark = pytest.mark.unit


def _random_packed(shape=(3, 8, 4), seed=0, scale_range=(100, 150)):
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (*shape, 16), dtype=torch.uint8, generator=generator)
    scales = torch.randint(*scale_range, shape, dtype=torch.uint8, generator=generator)
    return blocks, scales


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_is_bit_exact_with_transformers(dtype):
    from transformers.integrations.mxfp4 import _convert_moe_packed_tensors

    blocks, scales = _random_packed()
    ours = dequantize_mxfp4(blocks, scales, dtype)
    theirs = _convert_moe_packed_tensors(blocks, scales, dtype=dtype).transpose(1, 2)
    assert ours.dtype == dtype and ours.shape == (3, 8, 4 * 32)
    assert torch.equal(ours, theirs)


def test_low_nibble_is_the_first_element_and_scale_is_a_power_of_two():
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0] = 0x2F  # low nibble 0xF = -6.0, high nibble 0x2 = 1.0
    scales = torch.tensor([128], dtype=torch.uint8)  # 2^(128-127) = 2
    values = dequantize_mxfp4(blocks, scales, torch.float32)
    assert values.tolist() == [-12.0, 2.0] + [0.0] * 30


def test_quantize_round_trips_every_representable_weight_exactly():
    blocks, scales = _random_packed(seed=1)
    weight = dequantize_mxfp4(blocks, scales, torch.float32)
    assert torch.equal(dequantize_mxfp4(*quantize_mxfp4(weight), torch.float32), weight)


def test_quantize_picks_the_nearest_code_at_the_smallest_scale_that_fits():
    weight = torch.randn(4, 6, 64, generator=torch.Generator().manual_seed(2)) * 3
    blocks, scales = quantize_mxfp4(weight)
    assert blocks.shape == (4, 6, 2, 16) and scales.shape == (4, 6, 2)
    decoded = dequantize_mxfp4(blocks, scales, torch.float32).reshape(-1, 32)
    block_scale = torch.ldexp(torch.ones(scales.numel(), 1), scales.reshape(-1, 1).int() - 127)
    grid = torch.tensor(FP4_VALUES)[None, None, :] * block_scale[:, :, None]  # [blocks, 1, 16]
    flat = weight.reshape(-1, 32)
    nearest = (flat[:, :, None] - grid).abs().min(dim=-1).values
    assert torch.allclose((decoded - flat).abs(), nearest, atol=1e-6)
    # the smallest scale that fits: the block max must not fit at half the scale
    assert bool((flat.abs().amax(-1) > 3.0 * block_scale[:, 0]).all())


def test_quantize_rounds_ties_to_even():
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75]
    weight = torch.tensor([6.0, *ties] + [0.0] * 23)  # 6.0 pins the block scale to 2^0
    decoded = dequantize_mxfp4(*quantize_mxfp4(weight), torch.float32)
    assert decoded[1:9].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -1.0]


def test_bad_shapes_are_refused_with_the_shapes_named():
    with pytest.raises(ValueError, match="divisible by 32"):
        quantize_mxfp4(torch.zeros(2, 40))
    with pytest.raises(ValueError, match="do not match"):
        dequantize_mxfp4(
            torch.zeros(2, 3, 16, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8)
        )
