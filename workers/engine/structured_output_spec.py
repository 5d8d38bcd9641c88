"""Constrained decoding as the engine takes it: plain data that its caller builds (the
replica host from a queued request, or a user), compiled to a grammar by the model runner
(workers/runner/structured_output.py). Frozen, so that equal specs share one grammar."""

from __future__ import annotations

from dataclasses import dataclass

# the keys of sampling_params_from_args that carry a spec and the tokens already emitted
SPEC_ARG = "structured_output"
RESUME_ARG = "structured_output_resume"


@dataclass(frozen=True)
class FunctionGrammar:
    """A function the assistant turn may call, with its arguments' schema."""

    name: str
    parameters_json_schema: str = ""  # JSON Schema text; "" = any JSON object


@dataclass(frozen=True)
class StructuredOutputSpec:
    """For harmony output, the grammar keeps the whole assistant turn well-formed: only the
    final message and function-call arguments follow their schemas, reasoning stays free.
    `raw` constrains the whole output to `final_json_schema` instead (completions)."""

    raw: bool = False
    final_json_schema: str = ""  # JSON Schema text of the final message; "" = free text
    functions: tuple[FunctionGrammar, ...] = ()
    require_function_call: bool = False  # the turn ends in a call (tool_choice required/named)
    reasoning_token_budget: int | None = None  # at most this many analysis tokens, then answer
