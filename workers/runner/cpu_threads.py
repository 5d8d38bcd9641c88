"""How many threads the CPU forward uses: the cores the rest of the machine leaves free.

An OpenMP parallel region ends when its slowest thread does. With one thread per core and
a core busy with another process, every op waits for the scheduler to give that thread a
turn, and a step runs several times slower than it would on fewer threads (measured here:
a 16-request wave at 13.6 tok/s on 2 threads with one core busy, 79.5 on 1). So the runner
uses the cores other processes leave idle, re-estimated every `interval_s` from what they
really ran in the last interval: the busy time of this process's CPUs (`/proc/stat`, through
psutil) less this process's own CPU time. The load average is not used: it lags by a
minute, so a process that has just stopped would keep this one on fewer threads for that
long. A fixed count turns this off.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

import psutil
import torch


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def threads_for(cpus: int, others_busy_cpus: float) -> int:
    """The cores left after what other processes kept busy (in CPUs, e.g. 0.9)."""
    return max(1, min(cpus, math.floor(cpus - max(0.0, others_busy_cpus) + 0.5)))


def busy_cpu_seconds() -> float:
    """CPU seconds the CPUs this process may use have spent busy since boot (every process)."""
    try:
        mine = sorted(os.sched_getaffinity(0))
    except AttributeError:
        mine = []
    per_cpu = psutil.cpu_times(percpu=True)
    chosen = [per_cpu[i] for i in mine if i < len(per_cpu)] or per_cpu
    return sum(sum(times) - times.idle - getattr(times, "iowait", 0.0) for times in chosen)


class CpuThreadPolicy:
    """Sets torch's intra-op thread count for the thread that runs the model.

    `fixed_threads` > 0 pins the count; 0 adapts it to what other processes run."""

    def __init__(
        self,
        fixed_threads: int = 0,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        busy_seconds: Callable[[], float] = busy_cpu_seconds,
        own_seconds: Callable[[], float] = time.process_time,
    ) -> None:
        self.cpus = available_cpus()
        self.fixed_threads = fixed_threads
        self.interval_s = interval_s
        self._clock, self._busy, self._own = clock, busy_seconds, own_seconds
        # the first estimate covers the time since construction (loading the model)
        self._checked_at = clock()
        self._busy_at_check, self._own_at_check = self._busy(), self._own()
        self._applied: tuple[int, int] | None = None  # (thread ident, count) last set
        self.threads = fixed_threads or self.cpus

    def apply(self) -> int:
        """Re-estimate when due and set the count on the calling thread; returns it."""
        now = self._clock()
        elapsed = now - self._checked_at
        if not self.fixed_threads and elapsed >= self.interval_s:
            busy, own = self._busy(), self._own()
            others = ((busy - self._busy_at_check) - (own - self._own_at_check)) / elapsed
            self.threads = threads_for(self.cpus, others)
            self._checked_at, self._busy_at_check, self._own_at_check = now, busy, own
        key = (threading.get_ident(), self.threads)
        if key != self._applied:  # the count is per calling thread (an OpenMP setting)
            torch.set_num_threads(self.threads)
            self._applied = key
        return self.threads
