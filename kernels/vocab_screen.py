"""Greedy argmax over the vocabulary from an int8 projection, exact in fp32.

On a CPU the fp32 output projection is most of a decode step: a single row reads the
206 MB gpt-oss matrix, a batch spends ~1.7 GFLOP per 16 rows on it. A greedy row only needs
its best token, so the projection runs first in int8 (a quarter of the bytes, integer
dot products; fbgemm's dynamic-quantization GEMM, which torch ships for x86), and every
approximate logit comes with a rigorous bound on its distance from the true one:

    |h.w - approx| <= s_w/2 * |h|_1 + s_h/2 * |w_q|_1 (+ fp32 rounding)

with s_w the weight row's int8 scale, s_h the activations' (fbgemm quantizes them per
tensor over their whole range, 7 bits on AVX2, never clipping), and w_q the quantized row.
A token whose upper end falls below a row's best lower end can't be its argmax; the few left
(a few hundred of the 201,088 tokens in the random-weight benchmark model) are recomputed in
fp32 and the greatest wins, ties to the lower id. The answer is the exact fp32 argmax, not
an approximation of it: a row whose candidates overflow (nearly equal logits) returns -1 and
its caller takes the full fp32 path.
"""

from __future__ import annotations

import ctypes
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch

from .native_build import FLOAT, INT32, INT64, POINTER, function

CAPACITY = 4096  # candidates kept per row before it falls back to the full fp32 path
ACTIVATION_LEVELS = 127  # fbgemm quantizes activations to 7 bits on AVX2 (reduce_range)
# fp32 rounding of the exact recomputation, per unit of |h|_1 * max|w| and hidden dimension
_RECOMPUTE_ULP = 2.0**-23

_UPDATE = (
    POINTER, INT64, INT64, INT64, INT64, POINTER, POINTER, POINTER, FLOAT, POINTER, POINTER,
    POINTER, POINTER, INT32, INT32,
)  # fmt: skip
_FINISH = (
    POINTER, INT64, INT32, POINTER, POINTER, POINTER, POINTER, POINTER, INT32, POINTER, INT32,
)  # fmt: skip


def _update_kernel() -> ctypes._NamedFuncPointer | None:
    return function("vocab_screen", "oss_screen_update_f32", _UPDATE)


def _finish_kernel() -> ctypes._NamedFuncPointer | None:
    return function("vocab_screen", "oss_screen_finish_f32", _FINISH)


def available(weight: torch.Tensor) -> bool:
    """Whether `weight` (fp32 on the CPU) can be screened: torch's x86 int8 GEMM and the C
    kernels are both present."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and "fbgemm" in torch.backends.quantized.supported_engines
        and weight.is_contiguous()
        and hasattr(torch.ops.quantized, "linear_dynamic")
        and _update_kernel() is not None
        and _finish_kernel() is not None
    )


def _pack_int8(scale: torch.Tensor, quantized: torch.Tensor) -> object:
    """fbgemm's packed form of the int8 rows (per-row scales, zero points 0); the caller has
    selected the fbgemm engine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch flags its quantized tensor type as legacy
        qweight = torch._make_per_channel_quantized_tensor(
            quantized, scale.double(), torch.zeros_like(scale, dtype=torch.int64), 0
        )
        return torch.ops.quantized.linear_prepack(qweight, None)


class Int8VocabScreen:
    """int8 copies of `weight[:vocab_size]` ([vocab, H] fp32, contiguous) in vocabulary chunks,
    with each row's scale and the L1 norm of its quantized form."""

    def __init__(self, weight: torch.Tensor, vocab_size: int, chunk_rows: int):
        self.weight, self.vocab_size, self.chunk_rows = weight, vocab_size, chunk_rows
        self.refresh()

    def refresh(self) -> None:
        """(Re)quantize from the weight's current values."""
        rows = self.weight[: self.vocab_size].detach().float().contiguous()
        scale = rows.abs().amax(dim=1) / 127.0
        scale = torch.where(scale > 0, scale, torch.full_like(scale, 2.0**-100))
        quantized = torch.round(rows / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.col_scale = scale.contiguous()
        self.col_l1 = (quantized.abs().sum(dim=1, dtype=torch.int32).float() * scale).contiguous()
        starts = range(0, self.vocab_size, self.chunk_rows)
        parts = [
            (quantized[s : s + self.chunk_rows], scale[s : s + self.chunk_rows]) for s in starts
        ]
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = "fbgemm"
        try:  # packing runs single-threaded in torch: one chunk per thread
            with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
                self.chunks = list(pool.map(lambda part: _pack_int8(part[1], part[0]), parts))
        finally:
            torch.backends.quantized.engine = previous

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Each row's greedy id [M] int64, -1 where the row needs the full fp32 path; None
        when `hidden` is not finite (no bound holds)."""
        hidden = hidden.float().contiguous()
        rows, dim = hidden.shape
        row_l1 = hidden.abs().sum(dim=1)
        if not bool(torch.isfinite(row_l1).all()):
            return None
        span = float(hidden.max().clamp(min=0) - hidden.min().clamp(max=0))
        act_coef = 0.5 * span / ACTIVATION_LEVELS * 1.0001
        # the weight's rounding (1/2 of its scale per |h|_1) plus the fp32 recomputation's
        # rounding of both the winner and any rival (dim ulps of |h|_1 * max|w| each)
        row_coef = (row_l1 * (0.5 * 1.0001 + 2 * dim * _RECOMPUTE_ULP * 127)).contiguous()
        lower = torch.full((rows,), float("-inf"))
        ids = torch.empty(rows, CAPACITY, dtype=torch.int32)
        upper = torch.empty(rows, CAPACITY)
        count = torch.zeros(rows, dtype=torch.int32)
        threads = torch.get_num_threads()
        update, finish = _update_kernel(), _finish_kernel()
        assert update is not None and finish is not None, "check available() first"
        for index, packed in enumerate(self.chunks):
            start = index * self.chunk_rows
            approx = torch.ops.quantized.linear_dynamic(hidden, packed, True)
            update(
                approx.data_ptr(), rows, approx.shape[1], approx.stride(0), start,
                self.col_scale[start:].data_ptr(), self.col_l1[start:].data_ptr(),
                row_coef.data_ptr(), act_coef, lower.data_ptr(), ids.data_ptr(),
                upper.data_ptr(), count.data_ptr(), CAPACITY, threads,
            )  # fmt: skip
        best_ids = torch.empty(rows, dtype=torch.int64)
        finish(
            hidden.data_ptr(), rows, dim, self.weight.data_ptr(), lower.data_ptr(),
            ids.data_ptr(), upper.data_ptr(), count.data_ptr(), CAPACITY, best_ids.data_ptr(),
            threads,
        )  # fmt: skip
        return best_ids
