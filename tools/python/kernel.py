"""The interpreter that runs inside the sandbox: a persistent namespace that executes one
cell per request, like a notebook kernel.

It runs as a plain script (`python -I -u kernel.py LIMITS_JSON`), standard library only, so
it needs nothing of the host's packages. It first limits itself with setrlimit (limits its
children inherit and that it cannot raise again), then reads one JSON request per line
from its standard input: {"code": ..., "marker": ..., "timeout_s": ...}. The cell's stdout
and stderr (and its subprocesses') go to the process's own stdout, which the host reads;
after the cell the kernel writes `marker` on a line of its own, so the host knows where
the cell's output ends. The value of a last expression is printed, as a notebook shows it;
an exception prints its traceback. A cell that runs past `timeout_s` (wall clock or CPU)
is interrupted with an exception and the namespace survives; the host kills the whole
sandbox when even that fails.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import linecache
import os
import resource
import signal
import sys
import time
import traceback
from types import FrameType
from typing import Any


class CellTimeout(BaseException):
    """Raised inside a cell that ran past its time; BaseException so `except Exception`
    in the cell cannot swallow it."""


_in_cell = False
_kernel_pid = os.getpid()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if _in_cell:
        kind = "CPU" if signum == signal.SIGXCPU else "wall-clock"
        raise CellTimeout(f"the cell ran past its {kind} time limit and was interrupted")


def apply_limits(limits: dict[str, Any]) -> None:
    """Limits for this process and everything it starts: address space, processes, file
    size, open files, no core files; CPU gets a session-wide hard ceiling."""
    for name, value in limits.items():
        kind = getattr(resource, name)
        resource.setrlimit(kind, (value, value))


def _raise_cpu_soft_limit(extra_s: float) -> None:
    """Let the next cell use `extra_s` more CPU seconds than used so far (up to the hard
    ceiling); past it the kernel gets SIGXCPU and interrupts the cell."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    used = time.process_time()
    soft = int(used + extra_s) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _compile_cell(code: str, filename: str) -> tuple[Any, Any]:
    """The cell as statements to exec and, when it ends with an expression, that
    expression to evaluate and show."""
    tree = ast.parse(code, filename, "exec")
    last_expression = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body.pop()
        assert isinstance(last, ast.Expr)
        last_expression = compile(ast.Expression(last.value), filename, "eval")
    return compile(tree, filename, "exec"), last_expression


def run_cell(code: str, namespace: dict[str, Any], cell_number: int) -> None:
    global _in_cell
    filename = f"<cell {cell_number}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        statements, last_expression = _compile_cell(code, filename)
    except SyntaxError:
        traceback.print_exc(limit=0)
        return
    _in_cell = True
    try:
        exec(statements, namespace)
        if last_expression is not None:
            value = eval(last_expression, namespace)
            if value is not None:
                namespace["_"] = value
                print(repr(value))
    except BaseException as error:
        _in_cell = False
        _exit_if_forked()
        _print_error(error)
    finally:
        _in_cell = False
        _exit_if_forked()


def _exit_if_forked() -> None:
    """A process the cell forked never runs the kernel's own code (it would read the
    requests): it ends where the cell ends."""
    if os.getpid() != _kernel_pid:
        os._exit(0)


def _print_error(error: BaseException) -> None:
    """The cell's traceback without the kernel's own frames."""
    tb = error.__traceback__.tb_next if error.__traceback__ else None
    if isinstance(error, CellTimeout):
        frames = [frame for frame in traceback.extract_tb(tb) if frame.filename != __file__]
        text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
        sys.stderr.write(f"{text}TimeoutError: {error}\n")
        return
    sys.stderr.write("".join(traceback.format_exception(type(error), error, tb)))


def end_strays() -> None:
    """Kill every other process of the sandbox (what the cell started and left running:
    a fork bomb, a background job) and reap the kernel's children. Only inside the
    sandbox's own PID namespace, where `kill(-1)` reaches nothing of the host (and
    neither the kernel itself nor the namespace's init)."""
    for _ in range(1000):  # killed processes stay signalable until reaped
        try:
            os.kill(-1, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        _reap_children()
        time.sleep(0.001)
    _reap_children()


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _end_cell(marker: str) -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os.write(1, f"\n{marker}\n".encode())


def main() -> None:
    limits = json.loads(sys.argv[1])
    own_pid_namespace = limits.pop("own_pid_namespace", False)
    os.nice(limits.pop("nice", 0))  # model-written code yields the CPU to the host's server
    apply_limits(limits)
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # input() in a cell reads nothing instead of the requests
    signal.signal(signal.SIGALRM, _interrupt)
    signal.signal(signal.SIGXCPU, _interrupt)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    sys.argv = [""]
    for cell_number, line in enumerate(requests, start=1):
        request = json.loads(line)
        timeout_s = float(request["timeout_s"])
        _raise_cpu_soft_limit(timeout_s)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            run_cell(request["code"], namespace, cell_number)
        except CellTimeout as timeout:  # arrived between the cell's end and the flag
            sys.stderr.write(f"CellTimeout: {timeout}\n")
        finally:
            if own_pid_namespace:
                end_strays()
            _end_cell(request["marker"])


if __name__ == "__main__":
    main()
