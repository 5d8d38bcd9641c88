"""The `triton_interpreter` fixture: Triton kernels on CPU tensors under TRITON_INTERPRET=1.

Triton reads TRITON_INTERPRET when `@triton.jit` decorates a function, its own standard
library (tl.max, tl.sigmoid, ...) included, so it must be set before anything imports
triton: this conftest sets it when pytest collects tests/kernels (nothing collected earlier
imports triton; the fixture fails loudly if that changes). On CPU it changes nothing else:
every other test runs the torch path, which never imports triton. The fixture forces the
Triton backend for the tests that request it and makes sure the kernel modules were
imported as interpreted functions.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# import order: modules whose jit helpers others call come first
TRITON_MODULES = (
    "oss_serve.kernels.triton_mxfp4",
    "oss_serve.kernels.triton_moe",
    "oss_serve.kernels.triton_attention",
    "oss_serve.kernels.triton_kv",
    "oss_serve.kernels.triton_norm",
    "oss_serve.kernels.triton_rope",
    "oss_serve.kernels.triton_sampling",
    "oss_serve.kernels.triton_lora",
)


def _load_interpreted() -> None:
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    if isinstance(tl.standard.max, JITFunction):
        pytest.fail(
            "triton was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; "
            "run `TRITON_INTERPRET=1 pytest tests/kernels` or find the early import"
        )
    for name in TRITON_MODULES:
        module = importlib.import_module(name)
        if any(isinstance(value, JITFunction) for value in vars(module).values()):
            importlib.reload(module)  # imported earlier without the interpreter


@pytest.fixture(scope="module")
def triton_interpreter():
    pytest.importorskip("triton")
    from oss_serve.kernels.backend import force_backend

    _load_interpreted()
    with force_backend("triton"):
        yield
