"""The host's handle on one running kernel: send a cell, read its output up to the cell's
end marker (keeping only a bounded head of it), kill the whole sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
from dataclasses import dataclass

from oss_serve.tools.python.sandbox import KernelLaunch, remove_scratch

READ_CHUNK_BYTES = 64 * 1024
KILL_GRACE_S = 2.0  # past the cell's limit, the kernel's own interrupt had its chance


@dataclass(frozen=True)
class CellResult:
    output: str  # the head of the cell's stdout and stderr, at most the kept bytes
    output_bytes: int  # how much the cell wrote in all
    finished: bool  # False: the kernel died or was killed before the cell's end
    timed_out: bool = False  # killed by the host past the cell's time limit
    exit_code: int | None = None  # the kernel's exit status when it did not finish


class KernelProcess:
    """One interpreter process (inside bwrap, or bare when unsandboxed)."""

    def __init__(self, launch: KernelLaunch, process: asyncio.subprocess.Process) -> None:
        self._launch = launch
        self._process = process

    @classmethod
    async def start(cls, launch: KernelLaunch) -> KernelProcess:
        process = await asyncio.create_subprocess_exec(
            *launch.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=launch.env,
            cwd=launch.cwd,
            start_new_session=True,  # its own process group, killed as one
        )
        return cls(launch, process)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.returncode is None

    async def run(self, code: str, *, timeout_s: float, keep_bytes: int) -> CellResult:
        """Run one cell; past `timeout_s` plus a grace the kernel is killed."""
        marker = f"--oss-serve-cell-end-{secrets.token_hex(16)}--"
        request = json.dumps({"code": code, "marker": marker, "timeout_s": timeout_s})
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        reader = _OutputReader(stdout, f"\n{marker}\n".encode(), keep_bytes)
        timed_out = False
        try:
            stdin.write(request.encode("utf-8") + b"\n")
            await stdin.drain()
            finished = await asyncio.wait_for(reader.read_cell(), timeout_s + KILL_GRACE_S)
        except TimeoutError:
            finished, timed_out = False, True
        except ConnectionError:
            finished = False
        if finished:
            return CellResult(reader.head(), reader.total_bytes, finished=True)
        if not timed_out:  # the output ended: the kernel is exiting on its own
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), KILL_GRACE_S)
        exit_code = self._process.returncode
        await self.kill()
        return CellResult(reader.head(), reader.total_bytes, False, timed_out, exit_code)

    async def kill(self) -> None:
        """Kill the kernel and everything it started; with bwrap the PID namespace dies
        with it (--die-with-parent), without it its process group."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        await self._process.wait()
        remove_scratch(self._launch)


class _OutputReader:
    """Reads a cell's output up to its end marker, keeping a bounded head and a count."""

    def __init__(self, stream: asyncio.StreamReader, marker: bytes, keep_bytes: int) -> None:
        self._stream = stream
        self._marker = marker
        self._keep_bytes = keep_bytes
        self._kept = bytearray()
        self._pending = b""  # a tail that may hold the start of the marker
        self.total_bytes = 0

    async def read_cell(self) -> bool:
        """True when the marker arrived, False when the output ended without it."""
        while True:
            chunk = await self._stream.read(READ_CHUNK_BYTES)
            if not chunk:
                self._keep(self._pending)
                return False
            data = self._pending + chunk
            end = data.find(self._marker)
            if end >= 0:
                self._keep(data[:end])
                return True
            safe = max(0, len(data) - len(self._marker) + 1)
            self._keep(data[:safe])
            self._pending = data[safe:]

    def _keep(self, data: bytes) -> None:
        self.total_bytes += len(data)
        room = self._keep_bytes - len(self._kept)
        if room > 0:
            self._kept += data[:room]

    def head(self) -> str:
        return self._kept.decode("utf-8", errors="replace")
