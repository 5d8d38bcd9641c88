"""Without bubblewrap the python tool refuses to start unless unsandboxed python is
allowed; allowed, it still runs each session in its own limited kernel."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from oss_serve.tools.base import ToolCall
from oss_serve.tools.python import executor as executor_module
from oss_serve.tools.python.executor import PythonExecutor
from oss_serve.tools.python.sandbox import SandboxLimits, SandboxUnavailable

LIMITS = SandboxLimits(cell_timeout_s=2.0, memory_mb=512)


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "find_bwrap", lambda: None)


def test_without_bwrap_it_refuses_to_start(no_bwrap: None) -> None:
    with pytest.raises(SandboxUnavailable, match=r"bwrap .* not installed.*--allow-unsandboxed"):
        PythonExecutor.create(
            LIMITS, output_max_bytes=4096, max_sessions=2, allow_unsandboxed=False
        )


def test_a_bwrap_that_cannot_sandbox_is_refused_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "bwrap"
    broken.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    monkeypatch.setattr(executor_module, "find_bwrap", lambda: str(broken))
    with pytest.raises(SandboxUnavailable, match="No permissions to create new namespace"):
        PythonExecutor.create(
            LIMITS, output_max_bytes=4096, max_sessions=2, allow_unsandboxed=False
        )


async def test_allowed_unsandboxed_it_warns_and_runs_with_limits(
    no_bwrap: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        executor = PythonExecutor.create(
            LIMITS, output_max_bytes=4096, max_sessions=2, allow_unsandboxed=True
        )
    assert not executor.sandboxed
    assert "WITHOUT a sandbox" in caplog.text
    try:
        call = ToolCall(recipient="python", arguments="x = 20\nx * 2 + 2", session="s")
        assert (await executor.call(call)).text == "42"
        memory = ToolCall("python", "bytearray(1024 * 1024 * 1024)", "s")
        assert "MemoryError" in (await executor.call(memory)).text
        cwd = await executor.call(ToolCall("python", "import os; os.getcwd()", "s"))
        workdir = cwd.text.strip("'")
        assert "oss-serve-python-" in workdir and Path(workdir).is_dir()
    finally:
        await executor.aclose()
    assert not Path(workdir).exists()  # the session's scratch folder went with it
