"""MXFP4 (OCP microscaling FP4): gpt-oss stores its expert weights this way.

A weight [..., out, in] is cut into blocks of 32 along `in`. Each block keeps 32 FP4 (e2m1)
codes packed two per byte, low nibble first (`blocks` [..., out, in/32, 16] uint8), and one
shared power-of-two scale in E8M0 (`scales` [..., out, in/32] uint8, value 2^(s - 127)).
"""

from __future__ import annotations

import torch

from .backend import use_triton

BLOCK_SIZE = 32
BYTES_PER_BLOCK = BLOCK_SIZE // 2
SCALE_BIAS = 127
# e2m1 code -> value: bit 3 sign, 2 exponent bits, 1 mantissa bit
FP4_VALUES = (
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)
FP4_MAX = 6.0
# halfway points between consecutive magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_ROWS_PER_CHUNK = 1 << 20


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """Decode packed MXFP4 into a dense [..., out, in] tensor of `dtype` (bit-exact)."""
    if use_triton(blocks, scales):
        from . import triton_mxfp4

        return triton_mxfp4.dequantize_mxfp4(blocks, scales, dtype)
    return dequantize_mxfp4_ref(blocks, scales, dtype)


def quantize_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a dense [..., out, in] weight (in % 32 == 0) as (blocks, scales)."""
    return quantize_mxfp4_ref(weight)


def check_mxfp4_shapes(blocks: torch.Tensor, scales: torch.Tensor) -> None:
    """Refuse mismatched blocks/scales before a kernel reads past either."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BYTES_PER_BLOCK:
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)} "
            f"(expected blocks = scales.shape + ({BYTES_PER_BLOCK},))"
        )


def dequantize_mxfp4_ref(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """The torch reference: LUT lookup per nibble, then ldexp by the block's exponent."""
    check_mxfp4_shapes(blocks, scales)
    lut = torch.tensor(FP4_VALUES, dtype=dtype, device=blocks.device)
    packed = blocks.to(torch.uint8)
    codes = torch.stack(((packed & 0x0F).long(), (packed >> 4).long()), dim=-1)
    values = lut[codes].reshape(*scales.shape, BLOCK_SIZE)
    exponents = (scales.to(torch.int32) - SCALE_BIAS).unsqueeze(-1)
    values = torch.ldexp(values, exponents).to(dtype)
    return values.reshape(*scales.shape[:-1], scales.shape[-1] * BLOCK_SIZE)


def quantize_mxfp4_ref(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference: the smallest scale that fits the block's max, round half to even."""
    *lead, in_features = weight.shape
    if in_features % BLOCK_SIZE:
        raise ValueError(
            f"MXFP4 needs the last dim divisible by {BLOCK_SIZE}; got shape {tuple(weight.shape)}"
        )
    groups = in_features // BLOCK_SIZE
    flat = weight.detach().reshape(-1, BLOCK_SIZE)
    blocks = torch.empty(flat.shape[0], BYTES_PER_BLOCK, dtype=torch.uint8, device=weight.device)
    scales = torch.empty(flat.shape[0], dtype=torch.uint8, device=weight.device)
    for start in range(0, flat.shape[0], _ROWS_PER_CHUNK):
        stop = start + _ROWS_PER_CHUNK
        blocks[start:stop], scales[start:stop] = _quantize_rows(flat[start:stop].float())
    return blocks.reshape(*lead, groups, BYTES_PER_BLOCK), scales.reshape(*lead, groups)


def _quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [R, 32] fp32 -> packed codes [R, 16], E8M0 scales [R]."""
    amax = rows.abs().amax(dim=-1)
    exponent = torch.ceil(torch.log2(amax / FP4_MAX))
    exponent = torch.where(amax > 0, exponent, torch.zeros_like(exponent))
    exponent = exponent.clamp(-SCALE_BIAS, SCALE_BIAS).to(torch.int32)
    scaled = torch.ldexp(rows, -exponent.unsqueeze(-1)).abs().clamp(max=FP4_MAX)
    midpoints = torch.tensor(_MIDPOINTS, dtype=scaled.dtype, device=rows.device)
    round_down = torch.bucketize(scaled, midpoints, right=False)
    round_up = torch.bucketize(scaled, midpoints, right=True)
    # at a tie the two differ by one; the even code has the even (zero) mantissa bit
    magnitude = torch.where(round_down % 2 == 0, round_down, round_up)
    codes = (magnitude | (torch.signbit(rows).long() << 3)).to(torch.uint8)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, (exponent + SCALE_BIAS).to(torch.uint8)
