"""A queued request's sampling parameters as the engine takes them: vLLM-named plain
arguments and a StructuredOutputSpec, translated from the protobuf record here so that the
engine never sees the wire format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from oss_serve.protos import inference_pb2
from oss_serve.workers.engine.structured_output_spec import (
    RESUME_ARG,
    SPEC_ARG,
    FunctionGrammar,
    StructuredOutputSpec,
)


def engine_sampling_args(
    sampling: inference_pb2.SamplingParams, emitted: Sequence[int] = ()
) -> dict[str, Any]:
    """vLLM-named SamplingParams arguments of a queued request. The engine counts the
    `emitted` tokens (given to it as resume_output_token_ids) towards max/min_tokens itself;
    a structured-output matcher is advanced over them here."""
    args: dict[str, Any] = {}
    for name in (
        "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "min_tokens",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "ignore_eos", "logprobs",
    ):  # fmt: skip
        if sampling.HasField(name):
            args[name] = getattr(sampling, name)
    if sampling.stop:
        args["stop"] = list(sampling.stop)
    else:
        args["detokenize"] = False  # the router detokenizes; the engine needs text only for stops
    if sampling.stop_token_ids:
        args["stop_token_ids"] = list(sampling.stop_token_ids)
    if sampling.logit_bias:
        args["logit_bias"] = dict(sampling.logit_bias)
    if sampling.HasField("structured_output"):  # the host builds the grammar processor
        args[SPEC_ARG] = structured_output_spec(sampling.structured_output)
        args[RESUME_ARG] = list(emitted)
    return args


def structured_output_spec(message: inference_pb2.StructuredOutput) -> StructuredOutputSpec:
    """The engine's plain spec of a queued request's constrained decoding."""
    budget = message.reasoning_token_budget if message.HasField("reasoning_token_budget") else None
    return StructuredOutputSpec(
        raw=message.raw,
        final_json_schema=message.final_json_schema,
        functions=tuple(
            FunctionGrammar(f.name, f.parameters_json_schema) for f in message.functions
        ),
        require_function_call=message.require_function_call,
        reasoning_token_budget=budget,
    )
