"""Greedy argmax over the vocabulary from an int8 projection, exact in fp32.

On a CPU the fp32 output projection is most of a decode step: a single row reads the
206 MB gpt-oss matrix, a batch spends ~1.7 GFLOP per 16 rows on it. A greedy row only needs
its best token, so the projection runs first in int8 (a quarter of the bytes, integer
dot products; fbgemm's dynamic-quantization GEMM, which torch ships for x86), and every
approximate logit comes with a rigorous bound on its distance from the true one:

    |h.w - approx| <= s_w/2 * |h|_1 + s_h/2 * |w_q|_1 (+ fp32 rounding)

with s_w the weight row's int8 scale, s_h the activations' and w_q the quantized row. For
up to MAX_SMALL_ROWS rows a C kernel reads the plain int8 weight once and quantizes each
row with its own scale; larger batches take fbgemm's GEMM, which quantizes the batch with
one scale over its whole range (7 bits on AVX2, never clipping).
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

from .native_build import INT32, INT64, POINTER, function

CAPACITY = 4096  # candidates kept per row before it falls back to the full fp32 path
ACTIVATION_LEVELS = 127  # fbgemm quantizes activations to 7 bits on AVX2 (reduce_range)
# fp32 rounding of the exact recomputation, per unit of |h|_1 * max|w| and hidden dimension
_RECOMPUTE_ULP = 2.0**-23

# rows up to which one pass over the plain int8 weight (csrc) beats fbgemm's GEMM
# (measured over 201,088 x 256: 1.7 against 3.8 ms for one row, 3.7 against 4.6 for four)
MAX_SMALL_ROWS = 4

_UPDATE = (
    POINTER, INT64, INT64, INT64, INT64, POINTER, POINTER, POINTER, POINTER, POINTER, POINTER,
    POINTER, POINTER, INT32, INT32,
)  # fmt: skip
_SMALL = (POINTER, INT32, INT32, POINTER, POINTER, INT64, POINTER, POINTER, INT32)
_FINISH = (
    POINTER, INT64, INT32, POINTER, POINTER, POINTER, POINTER, POINTER, INT32, POINTER, INT32,
)  # fmt: skip


def _update_kernel() -> ctypes._NamedFuncPointer | None:
    return function("vocab_screen", "oss_screen_update_f32", _UPDATE)


def _finish_kernel() -> ctypes._NamedFuncPointer | None:
    return function("vocab_screen", "oss_screen_finish_f32", _FINISH)


def _small_kernel() -> ctypes._NamedFuncPointer | None:
    return function("vocab_screen", "oss_screen_int8_logits", _SMALL, ctypes.c_int)


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
        and _small_kernel() is not None
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
        self.quantized = quantized  # [vocab, H] int8, read as is by the few-row kernel
        self.col_scale = scale.contiguous()
        self.col_l1 = (quantized.abs().sum(dim=1, dtype=torch.int32).float() * scale).contiguous()
        starts = range(0, self.vocab_size, self.chunk_rows)
        parts = [
            (scale[s : s + self.chunk_rows], quantized[s : s + self.chunk_rows]) for s in starts
        ]
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = "fbgemm"
        try:  # packing runs single-threaded in torch: one chunk per thread
            with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
                self.chunks = list(pool.map(lambda part: _pack_int8(*part), parts))
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
        # the weight's rounding (1/2 of its scale per |h|_1) plus the fp32 recomputation's
        # rounding of both the winner and any rival (dim ulps of |h|_1 * max|w| each)
        row_coef = (row_l1 * (0.5 * 1.0001 + 2 * dim * _RECOMPUTE_ULP * 127)).contiguous()
        lower = torch.full((rows,), float("-inf"))
        ids = torch.empty(rows, CAPACITY, dtype=torch.int32)
        upper = torch.empty(rows, CAPACITY)
        count = torch.zeros(rows, dtype=torch.int32)
        threads = torch.get_num_threads()
        update, small = _update_kernel(), _small_kernel()
        assert update is not None and small is not None, "check available() first"

        def screen(approx: torch.Tensor, first_id: int, act_coef: torch.Tensor) -> None:
            update(
                approx.data_ptr(), rows, approx.shape[1], approx.stride(0), first_id,
                self.col_scale[first_id:].data_ptr(), self.col_l1[first_id:].data_ptr(),
                row_coef.data_ptr(), act_coef.data_ptr(), lower.data_ptr(), ids.data_ptr(),
                upper.data_ptr(), count.data_ptr(), CAPACITY, threads,
            )  # fmt: skip

        if rows <= MAX_SMALL_ROWS:
            # each row quantized with its own scale: half of it per unit of |w_q|_1
            approx = torch.empty(rows, self.vocab_size)
            row_scale = torch.empty(rows)
            status = small(
                hidden.data_ptr(), rows, dim, self.quantized.data_ptr(),
                self.col_scale.data_ptr(), self.vocab_size, approx.data_ptr(),
                row_scale.data_ptr(), threads,
            )  # fmt: skip
            if status == 0:
                screen(approx, 0, row_scale * (0.5 * 1.0001))
                return self._finish(hidden, lower, ids, upper, count)
        # fbgemm quantizes the whole batch with one scale over its range (7 bits on AVX2)
        span = float(hidden.max().clamp(min=0) - hidden.min().clamp(max=0))
        act_coef = torch.full((rows,), 0.5 * span / ACTIVATION_LEVELS * 1.0001)
        for index, packed in enumerate(self.chunks):
            approx = torch.ops.quantized.linear_dynamic(hidden, packed, True)
            screen(approx, index * self.chunk_rows, act_coef)
        return self._finish(hidden, lower, ids, upper, count)

    def _finish(
        self,
        hidden: torch.Tensor,
        lower: torch.Tensor,
        ids: torch.Tensor,
        upper: torch.Tensor,
        count: torch.Tensor,
    ) -> torch.Tensor:
        """The argmax among each row's surviving candidates, from fp32 dot products."""
        finish = _finish_kernel()
        assert finish is not None
        rows, dim = hidden.shape
        best_ids = torch.empty(rows, dtype=torch.int64)
        finish(
            hidden.data_ptr(), rows, dim, self.weight.data_ptr(), lower.data_ptr(),
            ids.data_ptr(), upper.data_ptr(), count.data_ptr(), CAPACITY, best_ids.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        return best_ids
