"""The CPU forward's thread count follows the cores other processes leave idle."""

from __future__ import annotations

import threading

import pytest
import torch

from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.runner.cpu_threads import CpuThreadPolicy, available_cpus, threads_for

pytestmark = pytest.mark.unit


def test_threads_are_the_cores_left_after_other_processes_load():
    assert threads_for(cpus=2, loadavg=0.1, own_busy_cpus=0.0) == 2
    assert threads_for(cpus=2, loadavg=2.0, own_busy_cpus=2.0) == 2  # only our own threads
    assert threads_for(cpus=2, loadavg=1.9, own_busy_cpus=0.9) == 1  # one core busy elsewhere
    assert threads_for(cpus=2, loadavg=40.0, own_busy_cpus=1.0) == 1  # never below one
    assert threads_for(cpus=8, loadavg=3.2, own_busy_cpus=0.0) == 5


def test_the_policy_re_estimates_on_its_interval_and_sets_the_calling_thread():
    now, load = [0.0], [40.0]
    policy = CpuThreadPolicy(interval_s=5.0, clock=lambda: now[0], loadavg=lambda: load[0])
    previous = torch.get_num_threads()
    try:
        assert policy.apply() == 1 and torch.get_num_threads() == 1
        load[0] = 0.0
        now[0] = 1.0
        assert policy.apply() == 1  # not due yet
        now[0] = 6.0
        assert policy.apply() == available_cpus()
        assert torch.get_num_threads() == available_cpus()
    finally:
        torch.set_num_threads(previous)


def test_a_fixed_count_is_kept_whatever_the_load():
    policy = CpuThreadPolicy(fixed_threads=1, loadavg=lambda: 0.0)
    seen: list[int] = []
    worker = threading.Thread(target=lambda: seen.append(policy.apply()))
    worker.start()
    worker.join()
    assert seen == [1] and policy.threads == 1


def test_a_negative_thread_count_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="cpu_threads"):
        EngineConfig(cpu_threads=-1)
