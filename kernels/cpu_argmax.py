"""A running row argmax over logit chunks on the CPU, through csrc/row_argmax.c.

torch's `max(dim)` carries an index through its whole reduction and runs several times slower
than a plain maximum; the C kernel takes the maximum first and looks for its column only in
a row whose best it improves. Used by the chunked greedy projection (kernels.vocab_projection).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from .native_build import load

_float_p = ctypes.POINTER(ctypes.c_float)
_int64_p = ctypes.POINTER(ctypes.c_int64)


@functools.cache
def _kernel() -> ctypes._NamedFuncPointer | None:
    library = load("row_argmax")
    if library is None:
        return None
    function = library.oss_row_argmax_update_f32
    function.restype = None
    i64 = ctypes.c_int64
    function.argtypes = [_float_p, i64, i64, i64, i64, _float_p, _int64_p, ctypes.c_int32]
    return function


def available() -> bool:
    return _kernel() is not None


def update(logits: torch.Tensor, first_id: int, best: torch.Tensor, best_ids: torch.Tensor) -> None:
    """Fold fp32 CPU `logits` [rows, cols] (columns first_id...) into the running `best`
    [rows] fp32 and `best_ids` [rows] int64, in place; a tie keeps the earlier id."""
    kernel = _kernel()
    assert kernel is not None, "check available() first"
    assert logits.dtype == torch.float32 and logits.stride(1) == 1
    assert best.is_contiguous() and best_ids.is_contiguous()
    kernel(
        ctypes.cast(logits.data_ptr(), _float_p), logits.shape[0], logits.shape[1],
        logits.stride(0), first_id, ctypes.cast(best.data_ptr(), _float_p),
        ctypes.cast(best_ids.data_ptr(), _int64_p), torch.get_num_threads(),
    )  # fmt: skip
