"""What crosses from a Ray replica's driver to its ranks: no processor objects, recipes that
rebuild the very same grammar state on a rank, and a clear refusal (naming the field) for a
request that cannot be sent, decided when it is added rather than in a step."""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Sequence

import pytest
import torch

from oss_serve.cluster.ray.step_message import RankProcessors, check_portable, pack_step
from oss_serve.common.vocab import VOCAB_SIZE
from oss_serve.workers.engine.sampling_params import InvalidRequestError, SamplingParams
from oss_serve.workers.engine.scheduler_output import NewRequestData, SchedulerOutput
from oss_serve.workers.engine.structured_output_spec import StructuredOutputSpec
from oss_serve.workers.runner.input_batch import CachedRequestState
from oss_serve.workers.runner.logits_processors import RequestLogitsProcessor
from oss_serve.workers.runner.structured_output import StructuredOutputProcessor, make_processor

pytestmark = pytest.mark.unit
SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green"]}, "n": {"type": "integer"}},
    "required": ["color", "n"],
}
SPEC = StructuredOutputSpec(final_json_schema=json.dumps(SCHEMA), reasoning_token_budget=3)
PROMPT = [200006, 1428, 200008, 12194, 200007]


def _allowed(processor: RequestLogitsProcessor) -> set[int]:
    logits = torch.zeros(1, VOCAB_SIZE)
    type(processor).apply_batch([processor], [0], [[]], logits)
    return set(torch.nonzero(logits[0] > -1e30).flatten().tolist())


def _walk(num_tokens: int, seed: int = 0) -> list[int]:
    """Tokens the grammar accepts, chosen from random logits through its mask."""
    generator = torch.Generator().manual_seed(seed)
    processor = make_processor(SPEC)
    tokens: list[int] = []
    for _ in range(num_tokens):
        logits = torch.randn(1, VOCAB_SIZE, generator=generator)
        StructuredOutputProcessor.apply_batch([processor], [0], [tokens], logits)
        tokens.append(int(logits[0].argmax()))
        processor.accept_token(tokens[-1])
    return tokens


def _new_request(request_id: str, output: Sequence[int], params: SamplingParams) -> NewRequestData:
    return NewRequestData(
        request_id=request_id,
        token_ids=[*PROMPT, *output],
        num_prompt_tokens=len(PROMPT),
        sampling_params=params,
        seed=0,
        eos_token_ids=frozenset(),
        block_ids=[[1, 2]],
        num_computed_tokens=0,
    )


def test_a_step_with_a_grammar_request_crosses_as_plain_data_and_a_rank_rebuilds_its_state():
    output = _walk(6)
    driver_processor = make_processor(SPEC, output)  # as the host builds a resumed request
    params = SamplingParams(max_tokens=40, logits_processors=[driver_processor])
    scheduled = SchedulerOutput(
        new_requests=[
            _new_request("r", output, params),
            _new_request("plain", [], SamplingParams()),
        ],
        num_scheduled_tokens={"r": 11, "plain": 5},
    )
    with pytest.raises(Exception, match="GrammarMatcher"):  # the bug: the step as it was
        pickle.dumps(scheduled)

    received = pickle.loads(pickle.dumps(pack_step(3, scheduled, {"x": 7})))
    assert received.scheduled.new_requests[0].sampling_params.logits_processors is None
    assert received.rank0_tokens == {"x": 7} and received.step_index == 3
    assert scheduled.new_requests[0].sampling_params.logits_processors == [driver_processor]

    rank = RankProcessors(1)
    rebuilt_step = rank.unpack(received)
    rebuilt = rebuilt_step.new_requests[0].sampling_params.logits_processors
    assert len(rebuilt) == 1 and rebuilt[0] is not driver_processor
    assert _allowed(rebuilt[0]) == _allowed(driver_processor)  # same state: same mask
    assert _allowed(rebuilt[0]) != _allowed(make_processor(SPEC))  # and not the start state
    assert rebuilt_step.new_requests[1].sampling_params.logits_processors is None


def test_a_rank_adopting_rank0s_token_rebuilds_its_processors_over_that_token():
    output = _walk(5)
    params = SamplingParams(logits_processors=[make_processor(SPEC, output[:4])])
    rank = RankProcessors(1)
    step = rank.unpack(
        pack_step(0, SchedulerOutput(new_requests=[_new_request("r", output[:4], params)]), {})
    )
    state = CachedRequestState.from_new(step.new_requests[0])
    candidates = sorted(_allowed(state.processors[0]) - {output[4]})
    own_sample = candidates[0]  # this rank sampled something else than rank 0 did
    state.token_ids.append(own_sample)
    state.processors[0].accept_token(own_sample)

    assert rank.adopt_rank0_tokens({"r": state}, {"r": output[4], "gone": 1}) == 1
    assert state.token_ids[-1] == output[4]
    assert _allowed(state.processors[0]) == _allowed(make_processor(SPEC, output))
    assert rank.adopt_rank0_tokens({"r": state}, {"r": output[4]}) == 0  # agreeing: no change


class _Unportable(RequestLogitsProcessor):
    def apply(self, output_token_ids, logits):
        return logits


class _LockedRecipe:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def build(self, output_token_ids):
        return _Unportable()


class _FailingRecipe:
    def build(self, output_token_ids):
        raise ValueError("no grammar for you")


class _WithRecipe(_Unportable):
    def __init__(self, recipe) -> None:
        self._recipe = recipe

    def recipe(self):
        return self._recipe


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        (SamplingParams(logits_processors=[lambda ids, row: row]), "logits_processors", "recipe"),
        (SamplingParams(logits_processors=[_Unportable()]), "logits_processors", "_Unportable"),
        (SamplingParams(logits_processors=[_WithRecipe(_LockedRecipe())]), "logits_processors", "picklable"),
        (SamplingParams(logits_processors=[_WithRecipe(_FailingRecipe())]), "logits_processors", "no grammar"),
        (SamplingParams(extra_args={"lock": threading.Lock()}), "extra_args", "picklable"),
    ],
)  # fmt: skip
def test_a_request_that_cannot_reach_the_ranks_is_refused_naming_the_field(params, field, message):
    with pytest.raises(InvalidRequestError, match=message) as refused:
        check_portable(params)
    assert refused.value.field == field


def test_grammar_and_plain_requests_can_reach_the_ranks():
    check_portable(SamplingParams(logits_processors=[make_processor(SPEC)]))
    check_portable(SamplingParams(extra_args={"k": [1, 2]}))
