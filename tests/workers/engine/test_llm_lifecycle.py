"""LLM runs on the executor its factory starts (the engine knows no cluster) and stops it
exactly once: at the end of a `with` block, on `shutdown()` or when deleted."""

from __future__ import annotations

import pytest

from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.llm import LLM
from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.runner.executor import LocalExecutor

pytestmark = pytest.mark.unit
ENGINE_ARGS = {
    "dtype": "float32",
    "device": "cpu",
    "max_model_len": 64,
    "kv_cache_memory": 1 << 20,
    "skip_tokenizer_init": True,
}
PROMPT = {"prompt_token_ids": [5, 17, 42]}
GREEDY = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)


class CountingExecutor(LocalExecutor):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.shutdowns = 0
        self.steps = 0

    def execute_model(self, scheduled):  # type: ignore[no-untyped-def]
        self.steps += 1
        return super().execute_model(scheduled)

    def shutdown(self) -> None:
        self.shutdowns += 1
        super().shutdown()


def test_llm_runs_on_its_factorys_executor_and_stops_it_once():
    started: list[CountingExecutor] = []

    def factory(config: EngineConfig) -> CountingExecutor:
        started.append(CountingExecutor(config))
        return started[-1]

    with LLM("gpt-oss-tiny", executor_factory=factory, **ENGINE_ARGS) as llm:
        assert len(llm.generate(PROMPT, GREEDY)[0].outputs[0].token_ids) == 3
        assert started[0].steps >= 3 and started[0].shutdowns == 0
    assert started[0].shutdowns == 1
    llm.shutdown()
    assert started[0].shutdowns == 1
    with pytest.raises(RuntimeError, match="shut down"):
        llm.generate(PROMPT, GREEDY)

    second = LLM("gpt-oss-tiny", executor_factory=factory, **ENGINE_ARGS)
    del second
    assert [executor.shutdowns for executor in started] == [1, 1]
