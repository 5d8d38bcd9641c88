"""The python tool in its bubblewrap sandbox, with real kernels: what a cell can and cannot
reach, how limits end it, and that sessions are kept apart and cleaned up."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from oss_serve.tools.base import ToolCall
from oss_serve.tools.python.executor import PythonExecutor
from tests.tools.python.conftest import CELL_TIMEOUT_S, OUTPUT_MAX_BYTES, needs_bwrap

pytestmark = [pytest.mark.integration]


def cell(code: str, session: str = "chain-1") -> ToolCall:
    return ToolCall(recipient="python", arguments=code, session=session)


_EARLIER_CHILDREN: set[int] = set()


@pytest.fixture(autouse=True)
def _earlier_children() -> None:
    """Children this test process already had (another test's redis-server, a kernel a
    session-wide fixture keeps) are not this test's sandboxes."""
    _EARLIER_CHILDREN.clear()
    _EARLIER_CHILDREN.update(child.pid for child in psutil.Process().children())


def sandbox_processes() -> list[psutil.Process]:
    """The sandboxes this test started: each new bwrap child and what runs under it."""
    found: list[psutil.Process] = []
    for child in psutil.Process().children():
        try:
            if child.pid not in _EARLIER_CHILDREN and child.name() == "bwrap":
                found += [child, *child.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


async def test_output_and_last_expression_come_back(sandboxed: PythonExecutor) -> None:
    out = await sandboxed.call(cell("print('hello')\n6 * 7"))
    assert out.text == "hello\n42"
    assert not out.error
    assert out.author == "python"
    assert out.details == {
        "code": "print('hello')\n6 * 7",
        "outputs": [{"type": "logs", "logs": "hello\n42"}],
    }


async def test_traceback_comes_back_as_text(sandboxed: PythonExecutor) -> None:
    out = await sandboxed.call(cell("def f():\n    return 1 / 0\nf()"))
    assert "ZeroDivisionError: division by zero" in out.text
    assert 'File "<cell 1>", line 2, in f' in out.text
    assert "kernel.py" not in out.text


async def test_state_persists_in_a_session_and_not_across_sessions(
    sandboxed: PythonExecutor,
) -> None:
    await sandboxed.call(cell("counter = 41", session="a"))
    assert (await sandboxed.call(cell("counter + 1", session="a"))).text == "42"
    other = await sandboxed.call(cell("counter", session="b"))
    assert "NameError: name 'counter' is not defined" in other.text


async def test_a_silent_cell_says_so(sandboxed: PythonExecutor) -> None:
    out = await sandboxed.call(cell("x = 1"))
    assert out.text.startswith("[WARN] No output available")


async def test_network_is_unreachable(sandboxed: PythonExecutor) -> None:
    code = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
        "    print('connected')\n"
        "except OSError as error:\n"
        "    print('refused', error.errno)\n"
        "socket.if_nameindex()"
    )
    out = await sandboxed.call(cell(code))
    assert "connected" not in out.text
    assert "refused 101" in out.text  # ENETUNREACH: no route out of the empty namespace
    assert "'lo'" in out.text and "eth" not in out.text


async def test_writing_outside_its_tmp_fails(sandboxed: PythonExecutor, tmp_path) -> None:
    target = tmp_path / "escaped.txt"
    code = (
        "import os\n"
        f"for path in ['/usr/x', '/etc/x', '/dev/x', '/x', {str(target)!r}]:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print('wrote', path)\n"
        "    except OSError as error:\n"
        "        print('denied', path, error.strerror)\n"
        "open('/tmp/mine.txt', 'w').write('ok')\n"
        "open('kept.txt', 'w').write('data')\n"
        "print(open('/tmp/mine.txt').read(), open('/mnt/data/kept.txt').read(), os.getcwd(), os.getuid())"
    )
    out = await sandboxed.call(cell(code))
    assert "wrote" not in out.text
    assert out.text.count("denied") == 5
    assert "ok data /mnt/data 65534" in out.text
    assert not target.exists()


async def test_host_secrets_are_not_visible(sandboxed: PythonExecutor, monkeypatch) -> None:
    monkeypatch.setenv("OSS_SERVE_API_KEYS", "sk-very-secret")
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "print(os.path.exists('/etc/shadow'), os.path.exists('/home'))"
    )
    out = await sandboxed.call(cell(code, session="fresh"))
    assert "OSS_SERVE_API_KEYS" not in out.text and "sk-very-secret" not in out.text
    assert "False False" in out.text


async def test_an_endless_loop_is_interrupted_and_the_session_survives(
    sandboxed: PythonExecutor,
) -> None:
    await sandboxed.call(cell("kept = 'still here'"))
    started = time.monotonic()
    out = await sandboxed.call(cell("while True:\n    pass"))
    elapsed = time.monotonic() - started
    assert CELL_TIMEOUT_S <= elapsed < CELL_TIMEOUT_S + 1.5
    assert "TimeoutError: the cell ran past its wall-clock time limit" in out.text
    assert (await sandboxed.call(cell("kept"))).text == "'still here'"


async def test_a_loop_in_c_code_is_killed_and_the_session_restarts(
    sandboxed: PythonExecutor,
) -> None:
    await sandboxed.call(cell("lost = 1"))
    started = time.monotonic()
    out = await sandboxed.call(cell("sum(range(10**11))"))  # no bytecode boundary to interrupt
    assert time.monotonic() - started < CELL_TIMEOUT_S + 4
    assert out.error
    assert "ran past its 2 s limit and was killed" in out.text
    assert "variables are lost" in out.text
    again = await sandboxed.call(cell("print('back'); lost"))
    assert "back" in again.text and "NameError" in again.text
    assert "session had ended" not in again.text  # the reset was reported once, above


async def test_memory_is_limited(sandboxed: PythonExecutor) -> None:
    out = await sandboxed.call(cell("block = bytearray(1024 * 1024 * 1024)"))
    assert "MemoryError" in out.text
    assert (await sandboxed.call(cell("1 + 1"))).text == "2"


async def test_a_fork_bomb_stays_contained(sandboxed: PythonExecutor) -> None:
    code = "import os\nwhile True:\n    os.fork()"
    out = await sandboxed.call(cell(code))
    assert "BlockingIOError" in out.text or "TimeoutError" in out.text or out.error
    # the host still starts processes, the sandbox holds only bwrap and one kernel
    assert subprocess.run(["true"], check=False).returncode == 0
    assert (await sandboxed.call(cell("print('alive')"))).text.startswith("alive")
    names = sorted(process.name() for process in sandbox_processes())
    assert names == ["bwrap", "bwrap", "python"]


async def test_processes_a_cell_leaves_running_end_with_it(sandboxed: PythonExecutor) -> None:
    await sandboxed.call(cell("import subprocess\nsubprocess.Popen(['sleep', '300'])"))
    names = [process.name() for process in sandbox_processes()]
    assert "sleep" not in names


async def test_output_is_capped_and_says_so(sandboxed: PythonExecutor) -> None:
    out = await sandboxed.call(cell("print('x' * 100_000)"))
    assert len(out.text.encode()) <= OUTPUT_MAX_BYTES
    assert out.text.endswith("of 100001 bytes shown]")
    assert out.details["outputs"][0]["logs"] == out.text


async def test_flooding_output_until_the_limit_stays_bounded(sandboxed: PythonExecutor) -> None:
    out = await sandboxed.call(cell("while True:\n    print('spam')"))
    assert len(out.text.encode()) <= OUTPUT_MAX_BYTES
    assert "[output truncated:" in out.text


async def test_closing_the_session_kills_its_process(sandboxed: PythonExecutor) -> None:
    await sandboxed.call(cell("x = 1", session="closing"))
    processes = sandbox_processes()
    assert processes
    await sandboxed.close_session("closing")
    _gone, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive


async def test_the_least_recently_used_session_is_evicted(sandboxed: PythonExecutor) -> None:
    for name in ("s1", "s2", "s3"):
        await sandboxed.call(cell(f"name = {name!r}", session=name))
    await sandboxed.call(cell("name = 's4'", session="s4"))  # max_sessions=3: s1 goes
    assert "NameError" in (await sandboxed.call(cell("name", session="s1"))).text
    assert (await sandboxed.call(cell("name", session="s4"))).text == "'s4'"
    kernels = [p for p in sandbox_processes() if p.name() == "python"]
    assert len(kernels) == 3


@needs_bwrap
def test_an_interpreter_under_tmp_still_runs_in_the_sandbox(tmp_path) -> None:
    """The sandbox's /tmp is its own tmpfs; a virtual environment under the host's /tmp
    (CI checkouts, scratch venvs) is bound over it, read-only."""
    venv = Path("/tmp") / f"sandbox-venv-{tmp_path.name}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    try:
        probe = (
            "import sys; sys.path.insert(0, sys.argv[1]);"
            "from oss_serve.tools.python.sandbox import SandboxLimits, find_bwrap, probe_bwrap;"
            "print(probe_bwrap(find_bwrap(), SandboxLimits(cell_timeout_s=2.0, memory_mb=512,"
            " max_processes=32)))"
        )
        root = str(Path(__file__).resolve().parents[3])
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-c", probe, root],
            capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip
        assert done.stdout.strip() == "None", done.stdout + done.stderr
    finally:
        shutil.rmtree(venv, ignore_errors=True)
