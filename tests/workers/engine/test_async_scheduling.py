"""Async scheduling (step N+1 scheduled and queued while step N runs) gives the tokens of
synchronous stepping: greedy and seeded draws, stop tokens, min/max tokens, n > 1, logprobs,
prefix caching, chunked prefill and preemption, on the CPU model runner's own thread."""

from __future__ import annotations

import random

import pytest

from oss_serve import LLM, SamplingParams

pytestmark = [pytest.mark.unit, pytest.mark.slow]
NUM_REQUESTS = 24

VARIANTS = {
    "prefix-caching": {},
    "small-chunks": {"long_prefill_token_threshold": 7, "max_num_batched_tokens": 48},
    "preempting-pool": {"num_kv_blocks": 60, "max_num_batched_tokens": 32, "max_model_len": 160},
    "max-model-len-cap": {"max_model_len": 72},
}


def _workload() -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(11)
    shared = [rng.randrange(2, 512) for _ in range(40)]
    requests = []
    for i in range(NUM_REQUESTS):
        tail = [rng.randrange(2, 512) for _ in range(rng.choice([1, 6, 19, 30]))]
        prompt = (shared + tail) if i % 2 else tail
        params = SamplingParams(
            temperature=0 if i % 3 == 0 else 0.9,
            top_p=0.9 if i % 3 == 1 else 1.0,
            top_k=20 if i % 3 == 2 else 0,
            seed=i,
            max_tokens=rng.choice([1, 3, 12, 20]),
            min_tokens=1 if i % 5 == 0 else 0,
            stop_token_ids=[rng.randrange(2, 512) for _ in range(40)] if i % 4 == 0 else None,
            logprobs=2 if i % 6 == 0 else None,
            n=2 if i % 7 == 3 else 1,
        )
        requests.append((prompt, params))
    return requests


def _run(folder, async_scheduling: bool, engine_args: dict) -> tuple[list, LLM]:
    llm = LLM(
        str(folder), dtype="float32", device="cpu", block_size=4, kv_cache_memory=8 << 20,
        skip_tokenizer_init=True, async_scheduling=async_scheduling,
        **{"max_model_len": 256, **engine_args},
    )  # fmt: skip
    workload = _workload()
    outputs = llm.generate(
        [{"prompt_token_ids": prompt} for prompt, _ in workload], [p for _, p in workload]
    )
    results = []
    for output in outputs:
        for completion in output.outputs:
            logprobs = [
                sorted((t, lp.logprob) for t, lp in entry.items())
                for entry in completion.logprobs or []
            ]
            results.append((completion.token_ids, completion.finish_reason, logprobs))
    return results, llm


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_async_scheduling_gives_the_tokens_of_synchronous_stepping(tiny_checkpoint, variant):
    _, folder = tiny_checkpoint
    expected, sync_llm = _run(folder, False, VARIANTS[variant])
    got, async_llm = _run(folder, True, VARIANTS[variant])
    assert not sync_llm.llm_engine.async_scheduling and async_llm.llm_engine.async_scheduling
    for index, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        assert ours[:2] == theirs[:2], f"sequence {index} ({variant}): tokens, finish reason"
        for mine, reference in zip(ours[2], theirs[2], strict=True):  # batches differ: fp32 noise
            assert [t for t, _ in mine] == [t for t, _ in reference], f"sequence {index}"
            assert [v for _, v in mine] == pytest.approx([v for _, v in reference], abs=1e-4)
    if variant == "preempting-pool":
        assert async_llm.llm_engine.stats().num_preemptions > 0
    # nothing is left behind: every block is back, no step is in flight
    core = async_llm.llm_engine
    assert not core.has_unfinished_requests()
    assert core.kv_cache.num_free_blocks == sync_llm.llm_engine.kv_cache.num_free_blocks


def test_the_next_step_is_scheduled_before_the_previous_ones_tokens_are_taken(tiny_checkpoint):
    _, folder = tiny_checkpoint
    llm = LLM(
        str(folder), dtype="float32", device="cpu", block_size=4, kv_cache_memory=8 << 20,
        skip_tokenizer_init=True, async_scheduling=True, max_model_len=256,
    )  # fmt: skip
    core = llm.llm_engine
    core.add_request("r", [5, 6, 7], SamplingParams(temperature=0, max_tokens=4))
    assert core.step() == []  # the prefill is queued; nothing to take yet
    request = core.scheduler.requests["r"]
    assert request.num_output_placeholders == 1 and request.num_output_tokens == 0
    outputs = core.step()  # queues the first decode, then takes the prefill's token
    assert [o.request_id for o in outputs] == ["r"]
    assert request.num_output_tokens == 1
    assert request.num_computed_tokens == 4 and request.num_output_placeholders == 1
    while core.has_unfinished_requests():
        core.step()
    assert request.num_output_tokens == 4 and request.num_output_placeholders == 0
