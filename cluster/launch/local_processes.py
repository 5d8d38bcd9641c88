"""The processes `oss-serve up` started, directly or through Ray, so that none outlives it.

Ray's local runtime (gcs_server, raylet, its agents) runs as children of this process and
the actors as children of the raylet. A SIGTERM sent to the whole process group (systemd,
`timeout`, `kill -TERM -PGID`) ends the raylet at the same moment as it asks us to stop:
its workers are then re-parented and would keep running. So the launcher records every
descendant while it runs (psutil keeps each process's start time, so a reused pid is never
mistaken for ours) and ends, by pid, whatever is still alive after the orderly shutdown.
"""

from __future__ import annotations

import os

import psutil

from oss_serve.common.logging import get_logger

log = get_logger(__name__)

RAY_CORE_NAMES = ("raylet", "gcs_server")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {process.name()}"
    except psutil.Error:
        return str(process.pid)


class StartedProcesses:
    """Descendants of this process seen so far, except the ones stopped on their own."""

    def __init__(self, exclude_pids: set[int] | None = None) -> None:
        self._root = psutil.Process(os.getpid())
        self._exclude = set(exclude_pids or ())
        self._seen: dict[int, tuple[psutil.Process, str]] = {}  # pid -> (process, name)

    def exclude(self, pid: int) -> None:
        self._exclude.add(pid)
        self._seen.pop(pid, None)

    def snapshot(self) -> None:
        """Record every current descendant (call after each start-up step)."""
        try:
            children = self._root.children(recursive=True)
        except psutil.Error:
            return
        for process in children:
            if process.pid not in self._exclude and process.pid not in self._seen:
                self._seen[process.pid] = (process, _describe(process))

    def ray_core_alive(self) -> bool:
        """Ray's gcs_server and raylet (as recorded) still run: a graceful drain can work."""
        core = [p for p, name in self._seen.values() if name.split(" ")[-1] in RAY_CORE_NAMES]
        return bool(core) and all(_alive(p) for p in core)

    def end_survivors(self, settle_s: float = 3.0, grace_s: float = 5.0) -> list[str]:
        """After `settle_s` for processes already exiting, SIGTERM what is still alive, then
        SIGKILL what ignores it; returns what had to be ended."""
        self.snapshot()
        alive = [p for p, _ in self._seen.values() if _alive(p)]
        psutil.wait_procs(alive, timeout=settle_s)
        survivors = [p for p in alive if _alive(p)]
        if not survivors:
            return []
        described = [self._seen[p.pid][1] for p in survivors]
        for process in survivors:
            try:
                process.terminate()
            except psutil.Error:
                continue
        _, stubborn = psutil.wait_procs(survivors, timeout=grace_s)
        for process in stubborn:
            try:
                process.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(stubborn, timeout=grace_s)
        log.warning("ended processes left after shutdown", processes=described)
        return described
