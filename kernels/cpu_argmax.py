"""A running row argmax over logit chunks on the CPU, through csrc/row_argmax.c.

torch's `max(dim)` carries an index through its whole reduction and runs several times slower
than a plain maximum; the C kernel takes the maximum first and looks for its column only in
a row whose best it improves. Used by the chunked greedy projection (kernels.vocab_projection),
which for a single row skips the chunks: `vocab_argmax` reads the weight once, at the speed
memory gives (measured: 7.1 against 7.6 ms for oneDNN over the 206 MB gpt-oss projection).
"""

from __future__ import annotations

import ctypes

import torch

from .native_build import INT32, INT64, POINTER, function

# rows up to which reading the weight once beats oneDNN's GEMM over packed chunks
MAX_DIRECT_ROWS = 1
_UPDATE = (POINTER, INT64, INT64, INT64, INT64, POINTER, POINTER, INT32)
_DIRECT = (POINTER, INT32, INT32, POINTER, INT64, POINTER, INT32)


def _update_kernel() -> ctypes._NamedFuncPointer | None:
    return function("row_argmax", "oss_row_argmax_update_f32", _UPDATE)


def _direct_kernel() -> ctypes._NamedFuncPointer | None:
    return function("row_argmax", "oss_vocab_argmax_f32", _DIRECT, ctypes.c_int)


def available() -> bool:
    return _update_kernel() is not None


def vocab_argmax(
    hidden: torch.Tensor, weight: torch.Tensor, vocab_size: int
) -> torch.Tensor | None:
    """Greedy ids [rows] of argmax(hidden @ weight[:vocab_size].T) for up to MAX_DIRECT_ROWS
    fp32 CPU rows, read straight from the contiguous weight; None where it does not apply."""
    kernel = _direct_kernel()
    rows = hidden.shape[0]
    if (
        kernel is None
        or not 1 <= rows <= MAX_DIRECT_ROWS
        or weight.dtype != torch.float32
        or hidden.dtype != torch.float32
        or not weight.is_contiguous()
    ):
        return None
    hidden = hidden.contiguous()
    best_ids = torch.empty(rows, dtype=torch.int64)
    status = kernel(
        hidden.data_ptr(), rows, hidden.shape[1], weight.data_ptr(), vocab_size,
        best_ids.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return best_ids if status == 0 else None


def update(logits: torch.Tensor, first_id: int, best: torch.Tensor, best_ids: torch.Tensor) -> None:
    """Fold fp32 CPU `logits` [rows, cols] (columns first_id...) into the running `best`
    [rows] fp32 and `best_ids` [rows] int64, in place; a tie keeps the earlier id."""
    kernel = _update_kernel()
    assert kernel is not None, "check available() first"
    assert logits.dtype == torch.float32 and logits.stride(1) == 1
    assert best.is_contiguous() and best_ids.is_contiguous()
    kernel(
        logits.data_ptr(), logits.shape[0], logits.shape[1], logits.stride(0), first_id,
        best.data_ptr(), best_ids.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
