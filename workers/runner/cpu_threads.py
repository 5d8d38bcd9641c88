"""How many threads the CPU forward uses: the cores the rest of the machine leaves free.

An OpenMP parallel region ends when its slowest thread does. With one thread per core and
a core busy with another process, every op waits for the scheduler to give that thread a
turn, and a step runs several times slower than it would on fewer threads (measured here:
a 16-request wave at 13.6 tok/s on 2 threads with one core busy, 79.5 on 1). So the runner
uses the cores that other processes leave idle, re-estimated every `interval_s` from the
1-minute load average less this process's own CPU use; a fixed count turns this off.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

import torch


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def threads_for(cpus: int, loadavg: float, own_busy_cpus: float) -> int:
    """The cores left after other processes' load (load average less our own share)."""
    others = max(0.0, loadavg - own_busy_cpus)
    return max(1, min(cpus, math.floor(cpus - others + 0.5)))


class CpuThreadPolicy:
    """Sets torch's intra-op thread count for the thread that runs the model.

    `fixed_threads` > 0 pins the count; 0 adapts it to the machine's load."""

    def __init__(
        self,
        fixed_threads: int = 0,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        loadavg: Callable[[], float] = lambda: os.getloadavg()[0],
    ) -> None:
        self.cpus = available_cpus()
        self.fixed_threads = fixed_threads
        self.interval_s = interval_s
        self._clock, self._loadavg = clock, loadavg
        self._checked_at = -math.inf
        self._cpu_at_check = time.process_time()
        self._applied: tuple[int, int] | None = None  # (thread ident, count) last set
        self.threads = fixed_threads or self.cpus

    def apply(self) -> int:
        """Re-estimate when due and set the count on the calling thread; returns it."""
        now = self._clock()
        if not self.fixed_threads and now - self._checked_at >= self.interval_s:
            cpu_now = time.process_time()
            elapsed = now - self._checked_at
            own = (cpu_now - self._cpu_at_check) / elapsed if math.isfinite(elapsed) else 0.0
            self.threads = threads_for(self.cpus, self._loadavg(), own)
            self._checked_at, self._cpu_at_check = now, cpu_now
        key = (threading.get_ident(), self.threads)
        if key != self._applied:  # the count is per calling thread (an OpenMP setting)
            torch.set_num_threads(self.threads)
            self._applied = key
        return self.threads
