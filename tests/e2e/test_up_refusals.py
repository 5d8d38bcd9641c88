"""`oss-serve up` refuses clearly (exit code != 0, one line saying what to change) and
leaves nothing running: a taken port, a model folder that is not a checkpoint, and a
checkpoint that does not load (which fails after Redis and Ray started)."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.up_process import UpProcess, left_behind

pytestmark = [pytest.mark.e2e]

REFUSAL_TIMEOUT_S = 60.0


def run_to_exit(up: UpProcess, timeout_s: float) -> tuple[int, dict[str, psutil.Process]]:
    """Run `up` until it exits; returns its exit code and every process it had started
    (by "pid name")."""
    up.start()
    assert up.process is not None
    seen: dict[str, psutil.Process] = {}
    deadline = time.monotonic() + timeout_s
    while up.process.poll() is None:
        if time.monotonic() > deadline:
            up.kill_tree()
            pytest.fail(f"`up` did not exit in {timeout_s}s:\n{up.output()}")
        with contextlib.suppress(psutil.Error):  # exited between poll() and tree()
            for process in up.tree()[1:]:
                seen.setdefault(f"{process.pid} {process.name()}", process)
        time.sleep(0.1)
    return up.process.returncode, seen


def error_lines(up: UpProcess) -> list[str]:
    return [line for line in up.output().splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("flag", ["--http-port", "--grpc-port"])
def test_a_taken_port_is_refused_at_once_naming_the_port_and_the_flag(tmp_path: Path, flag: str):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        up = UpProcess(tmp_path, "--model", "gpt-oss-tiny")
        up.args[up.args.index(flag) + 1] = str(port)
        code, started = run_to_exit(up, REFUSAL_TIMEOUT_S)
    assert code != 0
    errors = error_lines(up)
    assert len(errors) == 1, up.output()
    assert f"port {port}" in errors[0] and "taken" in errors[0] and flag in errors[0]
    assert not started, "nothing may start before the ports are checked"


@pytest.mark.parametrize(
    ("make_folder", "expected"),
    [
        (lambda root: root / "no-such-folder", "no such checkpoint folder"),
        (lambda root: root, "not a checkpoint folder"),
    ],
    ids=["missing", "not-a-checkpoint"],
)
def test_a_wrong_model_folder_is_refused_before_starting_anything(tmp_path, make_folder, expected):
    folder = make_folder(tmp_path / "models")
    (tmp_path / "models").mkdir()
    up = UpProcess(tmp_path / "run", "--model", str(folder))
    code, started = run_to_exit(up, REFUSAL_TIMEOUT_S)
    assert code != 0
    errors = error_lines(up)
    assert len(errors) == 1 and expected in errors[0], up.output()
    assert not started


def test_a_checkpoint_that_does_not_load_stops_everything_it_started(tmp_path, broken_checkpoint):
    up = UpProcess(tmp_path, "--model", str(broken_checkpoint))
    code, started = run_to_exit(up, 120.0)
    assert code == 1
    errors = error_lines(up)
    assert len(errors) == 1, up.output()
    assert "replica 0 failed to start" in errors[0] and "not.a.gpt_oss.tensor" in errors[0]
    names = " ".join(started)
    assert "redis-server" in names and "raylet" in names and "gcs_server" in names, names
    assert left_behind(list(started.values())) == []
