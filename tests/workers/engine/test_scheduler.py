"""Scheduler with a fake model runner: budget, chunking, priorities, preemption, abort."""

from __future__ import annotations

import pytest
import torch

from oss_serve.workers.engine.kv_cache_manager import KVCacheManager
from oss_serve.workers.engine.kv_cache_spec import KVCacheSpec, KVGroupSpec
from oss_serve.workers.engine.request import Request, RequestStatus
from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.engine.scheduler import Scheduler, SchedulerConfig
from oss_serve.workers.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput

pytestmark = pytest.mark.unit
SPEC = KVCacheSpec(
    4,
    (KVGroupSpec("full_attention", (1,)), KVGroupSpec("sliding_attention", (0,), sliding_window=8)),
    num_kv_heads=1, head_dim=2, dtype=torch.float32,
)  # fmt: skip


def _scheduler(num_blocks: int = 100, **config) -> Scheduler:
    return Scheduler(SchedulerConfig(**config), KVCacheManager(SPEC, num_blocks))


def _request(
    request_id: str, num_prompt: int, max_tokens: int = 4, priority: int = 0, first_token: int = 0
) -> Request:
    prompt = list(range(first_token, first_token + num_prompt))
    return Request(
        request_id, prompt, SamplingParams(max_tokens=max_tokens), seed=0,
        eos_token_ids=frozenset(), block_size=4, max_tokens=max_tokens, priority=priority,
    )  # fmt: skip


def _fake_runner(scheduler: Scheduler, scheduled: SchedulerOutput) -> ModelRunnerOutput:
    """Samples token 7 for every request whose scheduled chunk reaches its last token."""
    output = ModelRunnerOutput(request_ids=list(scheduled.num_scheduled_tokens))
    for request_id, count in scheduled.num_scheduled_tokens.items():
        request = scheduler.requests[request_id]
        done = request.num_computed_tokens + count == request.num_tokens
        output.sampled_token_ids.append([7] if done else [])
        output.logprobs.append(None)
    return output


def _step(scheduler: Scheduler) -> SchedulerOutput:
    scheduled = scheduler.schedule()
    scheduler.update_from_output(scheduled, _fake_runner(scheduler, scheduled))
    return scheduled


def test_prefill_is_chunked_under_the_token_budget_and_mixed_with_decodes():
    scheduler = _scheduler(max_num_batched_tokens=10)
    scheduler.add_request(_request("short", 3))
    scheduler.add_request(_request("long", 25))
    first = _step(scheduler)
    assert first.num_scheduled_tokens == {"short": 3, "long": 7}
    second = _step(scheduler)
    assert second.num_scheduled_tokens == {"short": 1, "long": 9}  # a decode beside a chunk
    assert [d.request_id for d in second.cached_requests] == ["short", "long"]
    assert not second.new_requests  # running requests travel as deltas


def test_lower_priority_value_runs_first_and_is_preempted_last():
    scheduler = _scheduler(num_blocks=16, max_num_batched_tokens=64)
    scheduler.add_request(_request("background", 16, max_tokens=30, priority=5))
    scheduler.add_request(_request("urgent", 16, max_tokens=30, priority=0))
    first = _step(scheduler)
    assert [d.request_id for d in first.new_requests] == ["urgent", "background"]
    while scheduler.stats.num_preemptions == 0:
        _step(scheduler)
    assert scheduler.requests["background"].status == RequestStatus.PREEMPTED
    assert scheduler.requests["urgent"].status == RequestStatus.RUNNING


def test_preempted_request_resumes_with_its_emitted_tokens_as_prompt():
    scheduler = _scheduler(num_blocks=12, max_num_batched_tokens=64)
    scheduler.add_request(_request("a", 12, max_tokens=20))
    scheduler.add_request(_request("b", 12, max_tokens=20))
    while scheduler.stats.num_preemptions == 0:
        _step(scheduler)
    victim = next(r for r in scheduler.requests.values() if r.status == RequestStatus.PREEMPTED)
    emitted = list(victim.output_token_ids)
    assert emitted
    while victim.status != RequestStatus.RUNNING:
        scheduled = _step(scheduler)
    (resumed,) = [n for n in scheduled.new_requests if n.request_id == victim.request_id]
    assert resumed.token_ids == [*range(12), *emitted]


def test_max_num_seqs_caps_the_running_batch():
    scheduler = _scheduler(max_num_seqs=2)
    for i in range(4):
        scheduler.add_request(_request(f"r{i}", 5))
    _step(scheduler)
    assert scheduler.num_running == 2 and scheduler.num_waiting == 2


def test_abort_removes_a_request_anywhere_and_frees_its_blocks():
    scheduler = _scheduler()
    scheduler.add_request(_request("running", 8, max_tokens=50))
    scheduler.add_request(_request("waiting", 8))
    scheduler.config.max_num_seqs = 1
    _step(scheduler)
    ended = scheduler.finish_requests(["running", "waiting"], RequestStatus.FINISHED_ABORTED)
    assert {r.request_id for r in ended} == {"running", "waiting"}
    assert not scheduler.has_unfinished_requests()
    assert scheduler.kv_cache.usage() == 0
    assert scheduler.schedule().freed_request_ids == {"running", "waiting"}


def test_generation_stops_at_max_tokens_and_max_model_len():
    scheduler = _scheduler(max_model_len=10)
    scheduler.add_request(_request("capped-by-len", 8, max_tokens=50))
    scheduler.add_request(_request("capped-by-tokens", 3, max_tokens=2))
    for _ in range(5):
        _step(scheduler)
    assert not scheduler.has_unfinished_requests()


def _run_to_completion(scheduler: Scheduler, limit: int = 200) -> None:
    for _ in range(limit):
        if not scheduler.has_unfinished_requests():
            return
        _step(scheduler)
    raise AssertionError("requests did not finish")


def test_a_waiting_higher_priority_request_takes_the_slot_of_a_lower_priority_one():
    scheduler = _scheduler(max_num_seqs=2)
    low = [_request(f"low{i}", 6, max_tokens=30, priority=5) for i in range(2)]
    for request in low:
        scheduler.add_request(request)
    _step(scheduler)
    _step(scheduler)
    urgent = _request("urgent", 6, max_tokens=3, priority=0)
    scheduler.add_request(urgent)
    scheduled = _step(scheduler)
    assert [n.request_id for n in scheduled.new_requests] == ["urgent"]
    assert low[1].status == RequestStatus.PREEMPTED  # the later of the two equals goes
    assert low[1].request_id in scheduled.freed_request_ids
    assert low[0].status == RequestStatus.RUNNING
    _run_to_completion(scheduler)
    assert urgent.num_output_tokens == 3 and all(r.num_output_tokens == 30 for r in low)
    assert scheduler.stats.num_preemptions == 1


def test_priority_preemption_frees_kv_blocks_only_as_far_as_needed():
    scheduler = _scheduler(num_blocks=20, max_num_batched_tokens=64)
    low = [_request(f"low{i}", 16, 4, priority=3 + i, first_token=100 * i) for i in range(2)]
    for request in low:
        scheduler.add_request(request)
    _step(scheduler)  # both prompts in: 2 x 8 blocks of 19 usable (no shared prefix)
    assert scheduler.kv_cache.num_free_blocks == 3
    urgent = _request("urgent", 12, max_tokens=2, priority=0, first_token=300)  # needs 6
    scheduler.add_request(urgent)
    scheduled = _step(scheduler)
    assert [n.request_id for n in scheduled.new_requests] == ["urgent"]
    assert low[1].status == RequestStatus.PREEMPTED  # the lowest priority (value 4)
    assert low[0].status == RequestStatus.RUNNING  # one victim was enough
    _run_to_completion(scheduler)
    assert all(r.num_output_tokens == 4 for r in low) and urgent.num_output_tokens == 2


def test_equal_priority_waits_its_turn_and_no_one_is_preempted():
    scheduler = _scheduler(max_num_seqs=1)
    scheduler.add_request(_request("first", 6, max_tokens=5, priority=2))
    _step(scheduler)
    scheduler.add_request(_request("second", 6, max_tokens=5, priority=2))
    _step(scheduler)
    assert scheduler.requests["second"].status == RequestStatus.WAITING
    _run_to_completion(scheduler)
    assert scheduler.stats.num_preemptions == 0
