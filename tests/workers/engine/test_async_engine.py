"""AsyncEngine: streamed deltas add up to the offline result; abort, bad input, stats, back-pressure."""

from __future__ import annotations

import asyncio

import pytest

from oss_serve import LLM, AsyncEngine, EngineConfig, SamplingParams
from oss_serve.workers.engine.sampling_params import InvalidRequestError
from tests.workers.engine.engine_stall import stall_engine_thread

pytestmark = pytest.mark.unit
PROMPT = list(range(20, 70))


def _config(folder) -> EngineConfig:
    return EngineConfig(model=str(folder), dtype="float32", device="cpu", max_model_len=256,
                        block_size=4, kv_cache_memory=4 << 20)  # fmt: skip


async def _collect(engine: AsyncEngine, request_id: str, prompt, params):
    return [delta async for delta in engine.generate(request_id, prompt, params)]


async def test_streamed_deltas_add_up_to_the_offline_output_while_bad_requests_fail_alone(
    tiny_checkpoint,
):
    folder = tiny_checkpoint[1]
    params = SamplingParams(temperature=0, max_tokens=10, logprobs=1)
    (offline,) = LLM(**{k: v for k, v in vars(_config(folder)).items() if v is not None}).generate(
        {"prompt_token_ids": PROMPT}, params
    )
    engine = AsyncEngine(_config(folder))
    await engine.start()
    try:
        good = asyncio.create_task(_collect(engine, "good", PROMPT, params))
        with pytest.raises(InvalidRequestError):
            await _collect(engine, "too-long", list(range(300)), params)
        with pytest.raises(InvalidRequestError):
            await _collect(engine, "empty", [], params)
        deltas = await good
        tokens = [t for d in deltas for t in d.outputs[0].token_ids]
        assert tokens == offline.outputs[0].token_ids
        assert "".join(d.outputs[0].text for d in deltas) == offline.outputs[0].text
        assert sum(len(d.outputs[0].logprobs) for d in deltas) == 10
        assert deltas[-1].finished and deltas[-1].outputs[0].finish_reason == "length"
        assert all(not d.finished for d in deltas[:-1]) and len(deltas) >= 2
        stats = engine.stats()
        assert stats.running == 0 and stats.generation_tokens >= 10 and stats.kv_blocks_total > 0
    finally:
        await engine.shutdown()


async def test_abort_ends_the_stream_and_frees_the_kv_blocks(tiny_checkpoint):
    engine = AsyncEngine(_config(tiny_checkpoint[1]))
    await engine.start()
    try:
        params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
        stream = engine.generate("long", PROMPT, params)
        first = await stream.__anext__()
        assert not first.finished
        await engine.abort("long")
        rest = [d async for d in stream]
        assert rest[-1].finished and rest[-1].outputs[0].finish_reason == "abort"
        for _ in range(50):
            if engine.stats().kv_usage == 0:
                break
            await asyncio.sleep(0.05)
        assert engine.stats().kv_usage == 0 and engine.stats().running == 0
    finally:
        await engine.shutdown()


async def test_can_admit_reports_back_pressure(tiny_checkpoint):
    config = _config(tiny_checkpoint[1])
    config.max_num_seqs = 1
    engine = AsyncEngine(config)
    await engine.start()
    try:
        assert engine.can_admit(len(PROMPT))
        stream = engine.generate("busy", PROMPT, SamplingParams(max_tokens=100, ignore_eos=True))
        await stream.__anext__()
        assert not engine.can_admit(len(PROMPT))  # the one running slot is taken
        await stream.aclose()  # closing the iterator early aborts the request
        for _ in range(50):
            if engine.can_admit(len(PROMPT)):
                break
            await asyncio.sleep(0.05)
        assert engine.can_admit(len(PROMPT))
    finally:
        await engine.shutdown()


async def test_admission_capacity_counts_a_burst_before_the_engine_thread_takes_it_in(
    tiny_checkpoint,
):
    config = _config(tiny_checkpoint[1])
    config.max_num_seqs = 3
    config.num_kv_blocks = 140  # about the smallest pool max_model_len=256 allows
    engine = AsyncEngine(config)
    await engine.start()
    try:
        start = engine.admission_capacity()
        assert start.num_requests == 3 and start.kv_blocks > 0
        # a prompt size of which two fit in the free KV blocks and three do not
        size = next(n for n in range(1, 256) if 3 * start.cost_blocks(n) > start.kv_blocks)
        assert start.admits([size, size]) and start.num_tokens >= size
        release = await stall_engine_thread(
            engine
        )  # the engine thread is busy: nothing is taken in yet
        params = SamplingParams(temperature=0, max_tokens=1)
        burst = [asyncio.create_task(_collect(engine, f"b{i}", [7 + i] * size, params))
                 for i in range(2)]  # fmt: skip
        await asyncio.sleep(0.05)
        assert engine.can_admit(1)  # a third slot is free ...
        assert not engine.can_admit(size)  # ... but not the KV blocks for a third such prompt
        small = asyncio.create_task(_collect(engine, "small", [5, 6], params))
        await asyncio.sleep(0.05)
        assert engine.admission_capacity().num_requests == 0 and not engine.can_admit(1)
        release.set()
        done = await asyncio.gather(*burst, small)
        assert all(d[-1].finished for d in done)
        assert engine.stats().num_preemptions == 0
        for _ in range(50):
            if engine.admission_capacity() == start:
                break
            await asyncio.sleep(0.02)
        assert engine.admission_capacity() == start
    finally:
        await engine.shutdown()


async def test_a_higher_priority_request_preempts_a_running_lower_priority_one(tiny_checkpoint):
    config = _config(tiny_checkpoint[1])
    config.max_num_seqs = 1
    engine = AsyncEngine(config)
    await engine.start()
    try:
        slow = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
        quick = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
        alone = {
            name: [t for d in await _collect(engine, f"{name}-alone", prompt, params)
                   for t in d.outputs[0].token_ids]
            for name, prompt, params in (("low", PROMPT, slow), ("high", PROMPT[:20], quick))
        }  # fmt: skip
        low = engine.generate("low", PROMPT, slow, priority=5)
        deltas = [await low.__anext__()]  # running, holding the only slot
        high = [d async for d in engine.generate("high", PROMPT[:20], quick, priority=0)]
        deltas += [d async for d in low]
        assert high[-1].metrics.finished_time < deltas[-1].metrics.finished_time  # went first
        assert engine.stats().num_preemptions == 1
        assert [t for d in high for t in d.outputs[0].token_ids] == alone["high"]
        assert [t for d in deltas for t in d.outputs[0].token_ids] == alone["low"]  # resumed
    finally:
        await engine.shutdown()
