"""Compiles the CPU kernels written in C (kernels/csrc/*.c) on the machine that runs them.

They are built on first use with the system C compiler, for this CPU's instruction set
(`-march=native`), and the shared library is cached under `$OSS_SERVE_KERNEL_CACHE` (default
`~/.cache/oss-serve/kernels`), keyed by the source, the flags, the compiler's version and the
CPU, so a restart loads it in milliseconds. Without a compiler (or when
`OSS_SERVE_NATIVE_KERNELS=0`) `load` returns None and callers keep their torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).with_name("csrc")
CACHE_ENV = "OSS_SERVE_KERNEL_CACHE"
ENABLE_ENV = "OSS_SERVE_NATIVE_KERNELS"
# reassociation lets the compiler vectorise the dot products' sums; infinities keep their
# meaning; no contraction into FMAs where a kernel must round each product as torch does
FLAGS = (
    "-O3", "-march=native", "-std=c11", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=off",
    "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
)  # fmt: skip


def native_kernels_enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "oss-serve" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


@functools.cache
def _compiler_version(compiler: str) -> str:
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    return result.stdout.splitlines()[0] if result.stdout else compiler


@functools.cache
def _cpu_signature() -> str:
    """What `-march=native` compiles for: a library built on another CPU (a shared home
    directory, a baked image) must not be loaded here."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def fp32_cpu_inference(*tensors: torch.Tensor) -> bool:
    """What every C kernel needs of its call: fp32 tensors in CPU memory and no autograd
    (training keeps the torch paths, whose backward the kernels don't have)."""
    return not torch.is_grad_enabled() and all(
        t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors
    )


# argument types of the kernels' C signatures: tensors pass as `tensor.data_ptr()`
POINTER, INT32, INT64, FLOAT = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float


@functools.cache
def function(
    name: str, symbol: str, argtypes: tuple[type, ...], restype: type | None = None
) -> ctypes._NamedFuncPointer | None:
    """`symbol` of the compiled `csrc/<name>.c` with its C signature, or None without it."""
    library = load(name)
    if library is None:
        return None
    kernel = getattr(library, symbol)
    kernel.argtypes, kernel.restype = list(argtypes), restype
    return kernel


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The compiled `csrc/<name>.c` (built now if not cached), or None where it can't be built."""
    if not native_kernels_enabled():
        return None
    compiler = _compiler()
    if compiler is None:
        logger.warning("no C compiler found: the CPU kernel %s falls back to torch", name)
        return None
    source_path = SOURCE_DIR / f"{name}.c"
    key = hashlib.sha256(
        b"\0".join(
            [
                source_path.read_bytes(),
                " ".join(FLAGS).encode(),
                _compiler_version(compiler).encode(),
                _cpu_signature().encode(),
            ]
        )
    ).hexdigest()[:16]
    library = cache_dir() / f"{name}-{key}.so"
    if not library.exists():
        try:
            _compile(compiler, source_path, library)
        except (OSError, subprocess.SubprocessError) as error:
            logger.warning("building the CPU kernel %s failed (%s): torch path used", name, error)
            return None
    return ctypes.CDLL(str(library))


def _compile(compiler: str, source: Path, library: Path) -> None:
    """Compile into a temporary file and rename it: concurrent builders never see half a file."""
    library.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=library.parent, suffix=".so.partial")
    os.close(handle)
    try:
        result = subprocess.run(
            [compiler, *FLAGS, str(source), "-o", partial, "-lm"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if result.returncode != 0:
            raise subprocess.SubprocessError(result.stderr.strip()[-2000:])
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
