"""A queued request's sampling reaches the engine as plain data: vLLM-named arguments and a
StructuredOutputSpec (no protobuf), from which the grammar processor is built."""

from __future__ import annotations

import pickle

import pytest

from oss_serve.cluster.replica.sampling import engine_sampling_args
from oss_serve.protos import inference_pb2
from oss_serve.workers.engine.structured_output_spec import (
    RESUME_ARG,
    SPEC_ARG,
    FunctionGrammar,
    StructuredOutputSpec,
)
from oss_serve.workers.runner.structured_output import (
    StructuredOutputProcessor,
    sampling_params_from_args,
)

pytestmark = pytest.mark.unit
ARGS_SCHEMA = '{"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}}'


def _queued(**structured: object) -> inference_pb2.SamplingParams:
    spec = inference_pb2.StructuredOutput(**structured)  # type: ignore[arg-type]
    spec.functions.add(name="get_weather", parameters_json_schema=ARGS_SCHEMA)
    return inference_pb2.SamplingParams(temperature=0.5, max_tokens=40, structured_output=spec)


def test_every_structured_output_field_becomes_the_plain_spec():
    args = engine_sampling_args(
        _queued(final_json_schema='{"type": "object"}', reasoning_token_budget=0), [7, 8]
    )
    assert args[SPEC_ARG] == StructuredOutputSpec(
        final_json_schema='{"type": "object"}',
        functions=(FunctionGrammar("get_weather", ARGS_SCHEMA),),
        reasoning_token_budget=0,  # a zero budget is kept apart from no budget
    )
    assert args[RESUME_ARG] == [7, 8]
    assert "extra_args" not in args
    unbudgeted = engine_sampling_args(_queued(require_function_call=True))[SPEC_ARG]
    assert unbudgeted.reasoning_token_budget is None and unbudgeted.require_function_call
    assert pickle.loads(pickle.dumps(args[SPEC_ARG])) == args[SPEC_ARG]  # travels to TP/EP ranks


def test_the_spec_builds_a_grammar_processor_with_a_recipe_and_no_wire_format_left():
    params = sampling_params_from_args(engine_sampling_args(_queued(require_function_call=True)))
    (processor,) = params.logits_processors or []
    assert isinstance(processor, StructuredOutputProcessor)
    recipe = processor.recipe()
    assert recipe is not None and isinstance(recipe.spec, StructuredOutputSpec)  # type: ignore[attr-defined]
    assert params.extra_args is None and params.temperature == 0.5 and params.max_tokens == 40
