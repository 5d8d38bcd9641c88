"""KV sizing from a profiling step: its arithmetic and vLLM's log line; the step itself runs
here on the CPU (on CUDA its allocator peak is what counts: benchmarks/gpu_check.py)."""

from __future__ import annotations

import pytest

from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.runner.executor import LocalExecutor
from oss_serve.workers.runner.memory_profile import GIB, MemoryProfile, profile_step

pytestmark = pytest.mark.unit


def test_the_kv_budget_is_what_the_weights_the_peak_and_non_torch_memory_leave():
    profile = MemoryProfile(
        total_bytes=80 * GIB, weights_bytes=13 * GIB, activation_peak_bytes=6 * GIB,
        non_torch_bytes=GIB, utilization=0.75,
    )  # fmt: skip
    assert profile.kv_cache_bytes == 40 * GIB
    assert profile.log_line().startswith("Available KV cache memory: 40.00 GiB")
    assert MemoryProfile(80, 10, 8, 4, 0.25).kv_cache_bytes == 0  # never negative


@pytest.mark.parametrize(("tokens", "seqs"), [(2048, 256), (37, 5), (3, 8)])
def test_the_profiling_step_runs_the_largest_batch_through_model_and_sampler(tokens, seqs):
    executor = LocalExecutor(EngineConfig(model="gpt-oss-tiny", dtype="float32", device="cpu"))
    profile_step(executor.model, tokens, seqs, executor.device)
