"""The scheduler with adapters: never more than max_loras distinct adapters in a step, slots
reused without reloading, a waiting adapter not starved by a busy one."""

from __future__ import annotations

import pytest

from oss_serve.workers.engine.kv_cache_manager import KVCacheManager
from oss_serve.workers.engine.request import Request
from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.engine.scheduler import Scheduler, SchedulerConfig
from oss_serve.workers.lora.request import LoRARequest
from oss_serve.workers.lora.slot_table import AdapterSlotTable
from tests.workers.engine.test_scheduler import SPEC, _fake_runner, _step

pytestmark = pytest.mark.unit
LORAS = [LoRARequest(f"a{i}", i + 1, f"/adapters/a{i}") for i in range(5)]


def _scheduler(max_loras: int, **config) -> Scheduler:
    return Scheduler(
        SchedulerConfig(**config), KVCacheManager(SPEC, 200), AdapterSlotTable(max_loras)
    )


def _request(request_id: str, lora: LoRARequest | None, max_tokens: int = 3, arrival: float = 0.0):
    return Request(
        request_id, [1, 2, 3, 4, 5], SamplingParams(max_tokens=max_tokens), seed=0,
        eos_token_ids=frozenset(), block_size=4, max_tokens=max_tokens, arrival_time=arrival,
        lora_request=lora,
    )  # fmt: skip


def _adapters_in(scheduler: Scheduler, scheduled) -> set[str]:
    names = set()
    for request_id in scheduled.num_scheduled_tokens:
        lora = scheduler.requests[request_id].lora_request
        if lora is not None:
            names.add(lora.lora_name)
    return names


def test_no_step_mixes_more_than_max_loras_adapters_and_every_request_finishes():
    scheduler = _scheduler(max_loras=2)
    for i in range(12):
        scheduler.add_request(_request(f"r{i}", LORAS[i % 5] if i % 3 else None, arrival=i))
    seen_per_step, loaded = [], {}
    while scheduler.has_unfinished_requests():
        scheduled = scheduler.schedule()
        seen_per_step.append(_adapters_in(scheduler, scheduled))
        scheduler.update_from_output(scheduled, _fake_runner(scheduler, scheduled))
        loaded.update(scheduled.lora_loads)
        for data in scheduled.new_requests:
            lora = LORAS[int(data.request_id[1:]) % 5] if int(data.request_id[1:]) % 3 else None
            assert (data.lora_slot < 0) == (lora is None)
            if lora is not None:
                assert loaded[data.lora_slot] == lora  # it sits in its slot
    assert max(len(s) for s in seen_per_step) == 2
    assert set().union(*seen_per_step) == {lora.lora_name for lora in LORAS}


def test_an_adapter_keeps_its_slot_after_its_requests_end_and_is_not_reloaded():
    scheduler = _scheduler(max_loras=2)
    scheduler.add_request(_request("first", LORAS[0], max_tokens=1))
    first = _step(scheduler)
    assert list(first.lora_loads.values()) == [LORAS[0]]
    scheduler.add_request(_request("second", LORAS[0], max_tokens=1))
    second = _step(scheduler)
    assert (
        second.lora_loads == {}
        and second.new_requests[0].lora_slot == first.new_requests[0].lora_slot
    )


def test_a_waiting_adapter_is_not_starved_by_a_stream_of_requests_of_running_ones():
    scheduler = _scheduler(max_loras=1, max_num_seqs=8)
    scheduler.add_request(_request("busy-0", LORAS[0], max_tokens=4, arrival=0))
    _step(scheduler)
    scheduler.add_request(_request("new-adapter", LORAS[1], max_tokens=1, arrival=1))
    for i in range(1, 6):  # more requests of the busy adapter keep arriving behind it
        scheduler.add_request(_request(f"busy-{i}", LORAS[0], max_tokens=4, arrival=1 + i))
    order = []
    while scheduler.has_unfinished_requests():
        order += [data.request_id for data in _step(scheduler).new_requests]
    assert order.index("new-adapter") < order.index("busy-1")


def test_an_unloaded_adapter_frees_its_slot_when_its_last_request_ends():
    table = AdapterSlotTable(1)
    slot, load = table.acquire(LORAS[0])
    assert (slot, load) == (0, True) and not table.can_start(LORAS[1])
    table.forget(LORAS[0].lora_int_id)
    assert table.held() == [LORAS[0]]  # still running
    table.release(LORAS[0])
    assert table.held() == [] and table.acquire(LORAS[1]) == (0, True)
