"""The structured-output spec of a request (what the replica's grammar must enforce), read
from a Chat Completions or Responses body that harmony has already validated.

- `response_format` / `text.format` json_schema or json_object -> the final message's schema;
- function tools with tool_choice auto -> each call's arguments follow its schema;
  `required` -> the turn must end in a call; a named function -> in a call of that one;
  `none` -> no calls;
- `thinking_token_budget` (vLLM's name) -> at most that many reasoning tokens.
Tool schemas go to the grammar as the client sent them (harmony only normalises its copy
for printing). Torch-free: the router builds the spec, the replica compiles it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from oss_serve.protos import inference_pb2
from oss_serve.router.errors import InvalidRequest

MAX_THINKING_TOKEN_BUDGET = 1 << 20


def chat_structured_output(body: Mapping[str, Any]) -> inference_pb2.StructuredOutput | None:
    """The spec of a Chat Completions body, or None when nothing is constrained."""
    tools = _functions(body.get("tools"), nested=True)
    fmt = body.get("response_format")
    schema = None
    if isinstance(fmt, Mapping):
        inner = fmt.get("json_schema")
        schema = _format_schema(
            fmt.get("type"), inner.get("schema") if isinstance(inner, Mapping) else None
        )
    return _spec(body, tools, schema, named=_named_choice(body.get("tool_choice"), nested=True))


def responses_structured_output(
    body: Mapping[str, Any],
) -> inference_pb2.StructuredOutput | None:
    """The spec of a Responses body (flat tools, `text.format`)."""
    tools = _functions(body.get("tools"), nested=False)
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    schema = (
        _format_schema(fmt.get("type"), fmt.get("schema")) if isinstance(fmt, Mapping) else None
    )
    return _spec(body, tools, schema, named=_named_choice(body.get("tool_choice"), nested=False))


def raw_structured_output(body: Mapping[str, Any]) -> inference_pb2.StructuredOutput | None:
    """Completions: `response_format` constrains the whole generated text."""
    fmt = body.get("response_format")
    if not isinstance(fmt, Mapping):
        return None
    inner = fmt.get("json_schema")
    schema = _format_schema(
        fmt.get("type"), inner.get("schema") if isinstance(inner, Mapping) else None
    )
    if schema is None:
        return None
    return inference_pb2.StructuredOutput(raw=True, final_json_schema=schema)


def _spec(
    body: Mapping[str, Any],
    tools: dict[str, str],
    final_schema: str | None,
    *,
    named: str | None,
) -> inference_pb2.StructuredOutput | None:
    choice = body.get("tool_choice")
    spec = inference_pb2.StructuredOutput(final_json_schema=final_schema or "")
    if named is not None:
        if named not in tools:
            raise InvalidRequest(
                f"tool_choice names function {named!r}, which is not in tools", field="tool_choice"
            )
        tools = {named: tools[named]}
        spec.require_function_call = True
    elif choice == "required":
        if not tools:
            raise InvalidRequest(
                "tool_choice 'required' needs at least one tool", field="tool_choice"
            )
        spec.require_function_call = True
    elif choice == "none":
        tools = {}
    for name, schema in tools.items():
        spec.functions.add(name=name, parameters_json_schema=schema)
    budget = body.get("thinking_token_budget")
    if budget is not None:
        if (
            not isinstance(budget, int)
            or isinstance(budget, bool)
            or not 0 <= budget <= MAX_THINKING_TOKEN_BUDGET
        ):
            raise InvalidRequest(
                f"thinking_token_budget must be an integer in [0, {MAX_THINKING_TOKEN_BUDGET}]",
                field="thinking_token_budget",
            )
        spec.reasoning_token_budget = budget
    if final_schema is None and not spec.functions and budget is None:
        return None
    return spec


def _functions(raw_tools: Any, *, nested: bool) -> dict[str, str]:
    """Function name -> its parameters schema as JSON text ("" = any object)."""
    functions: dict[str, str] = {}
    for tool in (
        raw_tools if isinstance(raw_tools, Sequence) and not isinstance(raw_tools, str) else ()
    ):
        spec = tool.get("function") if nested and isinstance(tool, Mapping) else tool
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            continue
        parameters = spec.get("parameters")
        functions[spec["name"]] = "" if parameters is None else _schema_text(parameters, "tools")
    return functions


def _named_choice(choice: Any, *, nested: bool) -> str | None:
    if not isinstance(choice, Mapping):
        if isinstance(choice, str) and choice not in ("auto", "none", "required"):
            raise InvalidRequest(
                f"tool_choice must be auto, none, required or a function, got {choice!r}",
                field="tool_choice",
            )
        return None
    function = choice.get("function") if nested else choice
    name = function.get("name") if isinstance(function, Mapping) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        shape = (
            '{"type": "function", "function": {"name": ...}}'
            if nested
            else ('{"type": "function", "name": ...}')
        )
        raise InvalidRequest(
            f"tool_choice must be auto, none, required or {shape}", field="tool_choice"
        )
    return name


def _format_schema(kind: Any, schema: Any) -> str | None:
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema":
        return _schema_text({"type": "object"} if schema is None else schema, "response_format")
    return None


def _schema_text(schema: Any, field: str) -> str:
    try:
        return json.dumps(schema, allow_nan=False, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as err:
        raise InvalidRequest(
            f"{field}: the schema is not JSON-serialisable: {err}", field=field
        ) from err
