"""`from oss_serve import LLM` with tensor_parallel_size=2 runs its ranks on Ray, and `del
llm`, `shutdown()` or leaving a `with` block gives the rank actors and their placement group
back: a second TP=2 LLM that needs every CPU of the runtime starts after the first one."""

from __future__ import annotations

import functools
import time

import pytest
import ray

from oss_serve import LLM, SamplingParams
from oss_serve.cluster.ray.executor import RayEngineOptions, RayExecutor
from tests.cluster.ray.ray_engines import ENGINE_ARGS, SMALL_VOCAB_CONFIG, write_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = {"prompt_token_ids": [5, 17, 42, 99, 7]}
GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


def _free_cpus_reach(expected: float, timeout_s: float = 60.0) -> float:
    """Ray frees a removed placement group's CPUs shortly after: wait for them."""
    deadline = time.monotonic() + timeout_s
    free = ray.available_resources().get("CPU", 0.0)
    while free != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        free = ray.available_resources().get("CPU", 0.0)
    return free


def test_two_tensor_parallel_llms_one_after_the_other_each_get_the_ranks(
    ray_runtime, tmp_path_factory
):
    checkpoint = str(write_checkpoint(SMALL_VOCAB_CONFIG, tmp_path_factory.mktemp("tiny"), seed=5))
    total_cpus = ray.cluster_resources()["CPU"]
    llm = LLM(checkpoint, tensor_parallel_size=2, **ENGINE_ARGS)  # the default: Ray's executor
    first_tokens = list(llm.generate(PROMPT, GREEDY)[0].outputs[0].token_ids)
    assert ray.available_resources().get("CPU", 0.0) < total_cpus  # the ranks hold CPUs
    del llm
    assert _free_cpus_reach(total_cpus) == total_cpus

    # two ranks that take every CPU: they can be placed only if the first LLM's are gone
    whole_runtime = functools.partial(
        RayExecutor,
        options=RayEngineOptions(cpus_per_rank=total_cpus / 2, placement_timeout_s=30),
    )
    with LLM(
        checkpoint, tensor_parallel_size=2, executor_factory=whole_runtime, **ENGINE_ARGS
    ) as llm:
        assert ray.available_resources().get("CPU", 0.0) == 0
        assert list(llm.generate(PROMPT, GREEDY)[0].outputs[0].token_ids) == first_tokens
    assert _free_cpus_reach(total_cpus) == total_cpus
    llm.shutdown()  # again: nothing left to stop
    with pytest.raises(RuntimeError, match="shut down"):
        llm.generate(PROMPT, GREEDY)
