"""AsyncEngine: streamed deltas add up to the offline result; abort, bad input, stats, back-pressure."""

from __future__ import annotations

import asyncio

import pytest

from oss_serve import LLM, AsyncEngine, EngineConfig, SamplingParams
from oss_serve.workers.sampling_params import InvalidRequestError

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
