"""Which implementation runs a kernel: Triton for CUDA tensors, the torch reference elsewhere.

Each public kernel function (kernels.attention.paged_attention, kernels.moe.moe_experts, ...)
asks `use_triton(*tensors)` once at its top. "auto" (the default) picks Triton when every
tensor is on a CUDA device, its dtype is one the kernels handle and `triton` imports;
`OSS_SERVE_KERNEL_BACKEND=triton|torch` or `force_backend(...)` override it (tests run the
Triton kernels on CPU tensors under `TRITON_INTERPRET=1`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Iterator
from typing import Literal

import torch

Backend = Literal["auto", "triton", "torch"]
BACKEND_ENV = "OSS_SERVE_KERNEL_BACKEND"
TRITON_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_BACKENDS: tuple[Backend, ...] = ("auto", "triton", "torch")
_local = threading.local()


@functools.cache
def triton_available() -> bool:
    """Whether `import triton` works here (it is an optional, Linux-x86 dependency)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install (no driver libs) counts as absent
        return False
    return True


def selected_backend() -> Backend:
    """The backend in force: a `force_backend` block, else the environment, else "auto"."""
    forced: Backend | None = getattr(_local, "forced", None)
    if forced is not None:
        return forced
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r}: expected one of {', '.join(_BACKENDS)}")
    return value


@contextlib.contextmanager
def force_backend(backend: Backend) -> Iterator[None]:
    """Run the kernels of this thread on `backend` inside the block (tests, benchmarks)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(_BACKENDS)}")
    previous = getattr(_local, "forced", None)
    _local.forced = backend
    try:
        yield
    finally:
        _local.forced = previous


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether a kernel called with these tensors should take its Triton path."""
    backend = selected_backend()
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{BACKEND_ENV}=triton but the `triton` package does not import")
        return True
    return (
        all(t.is_cuda for t in tensors)
        and all(t.dtype in TRITON_DTYPES or not t.is_floating_point() for t in tensors)
        and triton_available()
    )
