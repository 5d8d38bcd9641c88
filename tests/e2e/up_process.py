"""`oss-serve up` as a real subprocess: start it, wait for /ready, read what it printed,
collect its process tree, SIGTERM it, and check nothing it started is left running."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from tests.router.servers import free_port

OSS_SERVE = [sys.executable, "-m", "oss_serve.cli"]
KEY_LINE = re.compile(r"export OSS_SERVE_API_KEY=(\S+)")


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class UpProcess:
    """One `oss-serve up` run with its own free ports and log files."""

    def __init__(self, folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.link_port = free_port()
        self.args = [
            *OSS_SERVE, "up", "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port), "--link-port", str(self.link_port), *args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.stdout_path = folder / "up.out"
        self.stderr_path = folder / "up.err"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> UpProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=err, env=self.env)
        return self

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /ready answered 200 (raises with the output if `up` exited)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"`up` exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/ready", timeout=1.0).status_code == 200:
                    return time.monotonic() - self.started_at
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"`up` not ready in {timeout_s}s:\n{self.output()}")

    def wait_banner(self, timeout_s: float = 10.0) -> str:
        """The printed output once the banner is complete (it follows /ready by a moment)."""
        deadline = time.monotonic() + timeout_s
        while "Ctrl-C stops everything" not in self.output():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no banner:\n{self.output()}")
            time.sleep(0.1)
        return self.output()

    def api_key(self) -> str:
        match = KEY_LINE.search(self.wait_banner())
        assert match, self.output()
        return match.group(1)

    def tree(self) -> list[psutil.Process]:
        """This process and everything it started (redis-server, Ray's processes, actors)."""
        assert self.process is not None
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def terminate(self, timeout_s: float = 90.0) -> int:
        """SIGTERM; returns the exit code (kills the tree if it does not exit in time)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            raise

    def kill_tree(self) -> None:
        """Last resort for a failed test: SIGKILL what this run started, by pid."""
        if self.process is None or self.process.poll() is not None:
            return
        for process in reversed(self.tree()):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.process.wait(timeout=10)


def left_behind(processes: list[psutil.Process], grace_s: float = 10.0) -> list[str]:
    """Processes still running after `grace_s` (Ray's own exit can lag a moment)."""
    deadline = time.monotonic() + grace_s
    while True:
        remaining = [p for p in processes if alive(p)]
        if not remaining or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    described = []
    for process in remaining:
        try:
            described.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
        except psutil.Error:
            continue
    return described


READY_TIMEOUT_S = 1200.0  # includes training the demo model on a fresh machine


@contextlib.contextmanager
def ready_up(folder: Path) -> Iterator[UpProcess]:
    """`oss-serve up` started, ready and past its banner; its whole tree killed after."""
    running = UpProcess(folder).start()
    try:
        running.wait_ready(READY_TIMEOUT_S)
        running.wait_banner()
        yield running
    finally:
        running.kill_tree()
