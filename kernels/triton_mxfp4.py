"""MXFP4 decoding in Triton: the register-level helpers the MoE GEMM uses, and a bulk
dequantize kernel (the Triton path of kernels.mxfp4.dequantize_mxfp4).

Decoding builds fp32 bit patterns with integer ops only, so it is exact on every GPU and
in the interpreter: an e2m1 code is sign | exponent | mantissa with bias 1, and an E8M0
scale s is 2^(s-127), i.e. the fp32 whose exponent field is s (s = 0 is the subnormal
2^-127; s = 255, NaN in the OCP spec, is 2^127 * 2 as torch.ldexp computes it). The
products are exact in fp32 (or overflow/underflow exactly as ldexp does), and the cast to
the output dtype rounds once, like the reference's final `.to(dtype)`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .mxfp4 import BLOCK_SIZE, check_mxfp4_shapes


@triton.jit
def e2m1_to_f32(codes):
    """FP4 e2m1 codes (int32 0..15) -> fp32: 0, .5, 1, 1.5, 2, 3, 4, 6 and their negatives."""
    sign = (codes & 8) << 28
    exponent = (codes >> 1) & 3
    mantissa = codes & 1
    normal = ((exponent + 126) << 23) | (mantissa << 22)
    subnormal = mantissa * (126 << 23)  # code 1 is 0.5, code 0 is 0
    bits = sign | tl.where(exponent > 0, normal, subnormal)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def scale_by_e8m0(values, scales):
    """values * 2^(scales - 127) for E8M0 scales (int32 0..255) broadcast against values.

    2^128 (s = 255) is not an fp32, so that scale multiplies twice: 2^127 then 2.
    """
    bits = tl.where(scales > 0, tl.minimum(scales, 254) << 23, 0x00400000)
    values = values * bits.to(tl.float32, bitcast=True)
    return tl.where(scales == 255, values * 2.0, values)


@triton.jit
def mxfp4_tile_to_f32(packed, scales, ROWS: tl.constexpr, COLS: tl.constexpr):
    """packed bytes [ROWS, COLS // 2] (low nibble first) and E8M0 scales [ROWS, COLS // 32]
    -> the decoded fp32 tile [ROWS, COLS]."""
    packed = packed.to(tl.int32)
    codes = tl.reshape(tl.join(packed & 0x0F, packed >> 4), (ROWS, COLS))
    values = tl.reshape(e2m1_to_f32(codes), (ROWS, COLS // 32, 32))
    values = scale_by_e8m0(values, scales.to(tl.int32)[:, :, None])
    return tl.reshape(values, (ROWS, COLS))


@triton.jit
def _dequantize_kernel(blocks_ptr, scales_ptr, out_ptr, num_rows, BLOCK_ROWS: tl.constexpr):
    """One program decodes BLOCK_ROWS MXFP4 blocks (32 values each)."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < num_rows
    byte_cols = tl.arange(0, 16)
    packed = tl.load(
        blocks_ptr + rows[:, None] * 16 + byte_cols[None, :], mask=row_ok[:, None], other=0
    )
    scales = tl.load(scales_ptr + rows, mask=row_ok, other=127)
    values = mxfp4_tile_to_f32(packed, scales[:, None], BLOCK_ROWS, 32)
    cols = tl.arange(0, 32)
    tl.store(
        out_ptr + rows[:, None] * 32 + cols[None, :],
        values.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None],
    )


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """blocks [..., out, in/32, 16] uint8 + scales [..., out, in/32] -> dense [..., out, in]."""
    check_mxfp4_shapes(blocks, scales)
    blocks, scales = blocks.contiguous(), scales.contiguous()
    out = torch.empty(*scales.shape, BLOCK_SIZE, dtype=dtype, device=blocks.device)
    num_rows = scales.numel()
    if num_rows:
        block_rows = 64
        grid = (triton.cdiv(num_rows, block_rows),)
        _dequantize_kernel[grid](blocks, scales, out, num_rows, BLOCK_ROWS=block_rows)
    return out.reshape(*scales.shape[:-1], scales.shape[-1] * BLOCK_SIZE)
