"""A running row argmax over logit chunks on the CPU, through csrc/row_argmax.c.

torch's `max(dim)` carries an index through its whole reduction and runs several times slower
than a plain maximum; the C kernel takes the maximum first and looks for its column only in
a row whose best it improves. Used by the chunked greedy projection (kernels.vocab_projection),
which for a single row skips the chunks: `vocab_argmax` reads the weight once, at the speed
memory gives (measured: 7.1 against 7.6 ms for oneDNN over the 206 MB gpt-oss projection).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from .native_build import load

_float_p = ctypes.POINTER(ctypes.c_float)
_int64_p = ctypes.POINTER(ctypes.c_int64)


# rows up to which reading the weight once beats oneDNN's GEMM over packed chunks
MAX_DIRECT_ROWS = 1


@functools.cache
def _library() -> ctypes.CDLL | None:
    library = load("row_argmax")
    if library is None:
        return None
    i64, i32 = ctypes.c_int64, ctypes.c_int32
    update = library.oss_row_argmax_update_f32
    update.restype = None
    update.argtypes = [_float_p, i64, i64, i64, i64, _float_p, _int64_p, i32]
    direct = library.oss_vocab_argmax_f32
    direct.restype = ctypes.c_int
    direct.argtypes = [_float_p, i32, i32, _float_p, i64, _int64_p, i32]
    return library


def available() -> bool:
    return _library() is not None


def vocab_argmax(
    hidden: torch.Tensor, weight: torch.Tensor, vocab_size: int
) -> torch.Tensor | None:
    """Greedy ids [rows] of argmax(hidden @ weight[:vocab_size].T) for up to MAX_DIRECT_ROWS
    fp32 CPU rows, read straight from the contiguous weight; None where it does not apply."""
    library = _library()
    rows = hidden.shape[0]
    if (
        library is None
        or not 1 <= rows <= MAX_DIRECT_ROWS
        or weight.dtype != torch.float32
        or hidden.dtype != torch.float32
        or not weight.is_contiguous()
    ):
        return None
    hidden = hidden.contiguous()
    best_ids = torch.empty(rows, dtype=torch.int64)
    status = library.oss_vocab_argmax_f32(
        ctypes.cast(hidden.data_ptr(), _float_p), rows, hidden.shape[1],
        ctypes.cast(weight.data_ptr(), _float_p), vocab_size,
        ctypes.cast(best_ids.data_ptr(), _int64_p), torch.get_num_threads(),
    )  # fmt: skip
    return best_ids if status == 0 else None


def update(logits: torch.Tensor, first_id: int, best: torch.Tensor, best_ids: torch.Tensor) -> None:
    """Fold fp32 CPU `logits` [rows, cols] (columns first_id...) into the running `best`
    [rows] fp32 and `best_ids` [rows] int64, in place; a tie keeps the earlier id."""
    library = _library()
    assert library is not None, "check available() first"
    assert logits.dtype == torch.float32 and logits.stride(1) == 1
    assert best.is_contiguous() and best_ids.is_contiguous()
    library.oss_row_argmax_update_f32(
        ctypes.cast(logits.data_ptr(), _float_p), logits.shape[0], logits.shape[1],
        logits.stride(0), first_id, ctypes.cast(best.data_ptr(), _float_p),
        ctypes.cast(best_ids.data_ptr(), _int64_p), torch.get_num_threads(),
    )  # fmt: skip
