"""MXFP4 decoding in Triton (interpreter) is bit-exact against the torch reference."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.mxfp4 import dequantize_mxfp4, dequantize_mxfp4_ref

pytestmark = [
    pytest.mark.unit,
    pytest.mark.usefixtures("triton_interpreter"),
    # scales up to 2^128 overflow on purpose; numpy (the interpreter) says so
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _every_code_and_scale(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, 256, 2] blocks: all 256 scales, each with random bytes, plus every byte value."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (3, 256, 2, 16), dtype=torch.uint8, generator=g)
    blocks[0].view(-1)[:256] = torch.arange(256, dtype=torch.uint8)  # every (low, high) pair
    scales = torch.arange(256, dtype=torch.uint8)[None, :, None].expand(3, 256, 2).contiguous()
    return blocks, scales


def _assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    view = INT_VIEW[expected.dtype]
    differ = actual.view(view) != expected.view(view)
    assert not bool(differ.any()), f"{int(differ.sum())} values differ in their bits"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dequantize_is_bit_exact_for_every_code_and_every_scale(dtype):
    blocks, scales = _every_code_and_scale()
    out = dequantize_mxfp4(blocks, scales, dtype)  # the dispatcher, Triton path forced
    assert out.shape == (3, 256, 64) and out.dtype == dtype
    _assert_same_bits(out, dequantize_mxfp4_ref(blocks, scales, dtype))


def test_bf16_dequantize_is_bit_exact_where_the_interpreter_rounds_bf16_right():
    """The interpreter flushes bf16 subnormals (triton#11584): scales 0 and 1 are left out."""
    blocks, scales = _every_code_and_scale(seed=1)
    blocks, scales = blocks[:, 2:], scales[:, 2:]
    _assert_same_bits(
        dequantize_mxfp4(blocks, scales, torch.bfloat16),
        dequantize_mxfp4_ref(blocks, scales, torch.bfloat16),
    )


def test_dequantize_rejects_blocks_that_do_not_match_scales():
    with pytest.raises(ValueError, match="do not match scales"):
        dequantize_mxfp4(torch.zeros(2, 3, 16, dtype=torch.uint8), torch.zeros(2, 4))
