"""The CPU forward's thread count follows the cores other processes leave idle."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.runner.cpu_threads import (
    CpuThreadPolicy,
    available_cpus,
    busy_cpu_seconds,
    threads_for,
)

pytestmark = pytest.mark.unit


def test_threads_are_the_cores_left_after_what_other_processes_ran():
    assert threads_for(cpus=2, others_busy_cpus=0.1) == 2
    assert threads_for(cpus=2, others_busy_cpus=0.9) == 1  # one core busy elsewhere
    assert threads_for(cpus=2, others_busy_cpus=40.0) == 1  # never below one
    assert threads_for(cpus=8, others_busy_cpus=3.2) == 5
    assert threads_for(cpus=2, others_busy_cpus=-0.2) == 2  # counters read a tick apart


def test_the_policy_counts_other_processes_cpu_time_not_its_own():
    now, busy, own = [0.0], [100.0], [10.0]
    policy = CpuThreadPolicy(
        interval_s=2.0,
        clock=lambda: now[0],
        busy_seconds=lambda: busy[0],
        own_seconds=lambda: own[0],
    )
    previous = torch.get_num_threads()
    try:
        cpus = available_cpus()
        # two seconds in which this process ran on every core and nothing else ran
        now[0], busy[0], own[0] = 2.0, 100.0 + 2 * cpus, 10.0 + 2 * cpus
        assert policy.apply() == cpus and torch.get_num_threads() == cpus
        # then another process keeps one core busy the whole interval
        now[0], busy[0] = 4.0, busy[0] + 2.0
        assert policy.apply() == max(1, cpus - 1)
        busy[0] += 40.0  # not due yet: the count stays until the interval has passed
        now[0] = 5.0
        assert policy.apply() == max(1, cpus - 1)
        now[0], busy[0] = 7.0, busy[0] + 0.1  # it stopped: every core again within one interval
        assert policy.apply() == 1  # the 40 s burst landed in this interval
        now[0], busy[0] = 9.0, busy[0] + 0.1
        assert policy.apply() == cpus
    finally:
        torch.set_num_threads(previous)


def test_the_busy_time_of_this_processs_cpus_grows_while_it_computes():
    before, own_before = busy_cpu_seconds(), time.process_time()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    grown, own = busy_cpu_seconds() - before, time.process_time() - own_before
    assert grown >= 0.5 * own > 0  # ticks are 10 ms: allow for the counters' granularity


def test_a_fixed_count_is_kept_whatever_the_load():
    policy = CpuThreadPolicy(fixed_threads=1, busy_seconds=lambda: 0.0)
    seen: list[int] = []
    worker = threading.Thread(target=lambda: seen.append(policy.apply()))
    worker.start()
    worker.join()
    assert seen == [1] and policy.threads == 1


def test_a_negative_thread_count_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="cpu_threads"):
        EngineConfig(cpu_threads=-1)
