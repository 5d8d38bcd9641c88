"""The pipelined engine core gives exactly the plain EngineCore's outputs while it dispatches
step N+1 before post-processing step N (no Ray here: the steps run on a worker thread)."""

from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch

from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.engine_core import EngineCore
from oss_serve.workers.engine.pipelined_core import PipelinedEngineCore
from oss_serve.workers.engine.sampling_params import RequestOutputKind, SamplingParams
from oss_serve.workers.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.model.model import GptOss
from oss_serve.workers.model.weights import init_random_weights
from oss_serve.workers.runner.executor import LocalExecutor

pytestmark = pytest.mark.unit

CONFIG = EngineConfig(
    model="gpt-oss-tiny", dtype="float32", device="cpu", block_size=4,
    kv_cache_memory=4 << 20, max_model_len=128, max_num_batched_tokens=48,
)  # fmt: skip


class ThreadedExecutor(LocalExecutor):
    """Runs each step on a worker thread; the SchedulerOutput is copied at submit, as Ray's
    object store does, so the driver may go on mutating its own objects."""

    def __init__(self, config: EngineConfig, model: GptOss) -> None:
        super().__init__(config, model=model)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.submitted = 0

    def submit(self, scheduled: SchedulerOutput) -> Future[ModelRunnerOutput]:
        self.submitted += 1
        return self.pool.submit(self.execute_model, copy.deepcopy(scheduled))


@pytest.fixture(scope="module")
def model():
    model = GptOss(PRESETS["gpt-oss-tiny"], experts_format="dense", dtype=torch.float32)
    return init_random_weights(model, seed=2, std=0.2)


def _requests(stop_string: str | None) -> list[tuple[list[int], SamplingParams]]:
    final = RequestOutputKind.FINAL_ONLY
    return [
        (list(range(100, 100 + 6 * i + 3)), SamplingParams(
            temperature=0 if i % 2 else 0.8, seed=i, max_tokens=4 + 3 * i,
            n=2 if i == 3 else 1, stop=stop_string if i in (0, 1, 4) else None,
            prompt_logprobs=1 if i == 2 else None, logprobs=1, output_kind=final,
        ))
        for i in range(6)
    ]  # fmt: skip


def _run(core: EngineCore, requests) -> dict[str, list[tuple]]:
    for index, (prompt, params) in enumerate(requests):
        core.add_request(str(index), prompt, params)
    finished = {}
    while core.has_unfinished_requests():
        for output in core.step():
            if output.finished:
                finished[output.request_id] = [
                    (c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in output.outputs
                ]
    return finished


def test_pipelined_core_matches_the_plain_core_with_stop_strings_sampling_and_n(model):
    plain = EngineCore.from_config(CONFIG, LocalExecutor(CONFIG, model=model))
    probe = _run(plain, _requests(None))
    stop_string = probe["0"][0][1][3:5]  # a piece of text request 0 produces: it must stop there
    expected = _run(plain, _requests(stop_string))
    assert expected["0"][0][2] == "stop"

    executor = ThreadedExecutor(CONFIG, model)
    pipelined = PipelinedEngineCore.from_config(CONFIG, executor)
    in_flight_while_processing = []
    process = pipelined.output_processor.process

    def spy(core_outputs):
        in_flight_while_processing.append(pipelined._inflight is not None)
        return process(core_outputs)

    pipelined.output_processor.process = spy  # type: ignore[method-assign]
    assert _run(pipelined, _requests(stop_string)) == expected
    # every step but the last ran on the executor while the previous one was post-processed
    assert sum(in_flight_while_processing) >= len(in_flight_while_processing) - 2
    assert not pipelined.has_unfinished_requests()
    assert pipelined.stats().requests_finished == len(expected)
