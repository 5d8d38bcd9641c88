"""Reading and checking the fields the Chat Completions and Responses bodies share.

Every check raises `HarmonyRequestError` naming the field, so a bad request becomes an
HTTP 400 that says what to fix instead of a crash deep inside rendering.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from oss_serve.harmony.builtin_tools import builtin_namespaces
from oss_serve.harmony.conversation import (
    Conversation,
    DeveloperSpec,
    HarmonyMessage,
    ReasoningEffort,
    ResponseFormat,
    SystemSpec,
)
from oss_serve.harmony.errors import HarmonyRequestError
from oss_serve.harmony.schema_normalize import normalize_schema
from oss_serve.harmony.tool_schema import ToolNamespace, ToolSpec

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# OpenAI's rule for function names; it also keeps the harmony header parseable.
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_EFFORTS: dict[str, ReasoningEffort] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "minimal": "low",  # OpenAI's lowest level for other models; gpt-oss's lowest is low
}


def as_mapping(value: Any, field: str) -> Mapping[str, Any]:
    """A JSON object as a Mapping; pydantic models (anything with `model_dump`) are dumped."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump(by_alias=True, exclude_none=True)
        if isinstance(dumped, Mapping):
            return dumped
    raise HarmonyRequestError(field, f"must be an object, got {_type_name(value)}")


def as_list(value: Any, field: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    raise HarmonyRequestError(field, f"must be an array, got {_type_name(value)}")


def optional_str(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise HarmonyRequestError(field, f"must be a string, got {_type_name(value)}")


def required_str(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    what = "is required" if value is None else f"must be a string, got {_type_name(value)}"
    raise HarmonyRequestError(field, what)


def function_name(value: Any, field: str) -> str:
    name = required_str(value, field)
    if not _FUNCTION_NAME.match(name):
        raise HarmonyRequestError(
            field, f"{name!r} is not a valid function name (1-64 of a-z, A-Z, 0-9, _ and -)"
        )
    return name


def content_text(
    content: Any, field: str, part_types: Collection[str], *, allow_none: bool = False
) -> str | None:
    """A message's text: a string, or text parts joined by newlines; other parts are refused."""
    if content is None:
        if allow_none:
            return None
        raise HarmonyRequestError(field, "is required")
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise HarmonyRequestError(
            field, f"must be a string or an array of content parts, got {_type_name(content)}"
        )
    texts = []
    for index, raw_part in enumerate(content):
        part = as_mapping(raw_part, f"{field}[{index}]")
        part_type = part.get("type")
        if part_type not in part_types:
            raise HarmonyRequestError(
                f"{field}[{index}].type",
                f"content part type {part_type!r} is not supported (gpt-oss reads text only; "
                f"use one of {sorted(part_types)})",
            )
        texts.append(required_str(part.get("text"), f"{field}[{index}].text"))
    return "\n".join(texts)


def checked_schema(value: Any, field: str, *, normalize: bool) -> Mapping[str, Any]:
    """A JSON-schema object that is valid JSON; tool parameters are also normalised for printing."""
    schema = as_mapping(value, field)
    try:
        json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise HarmonyRequestError(field, f"is not JSON-serialisable: {exc}") from exc
    if not normalize:
        return schema
    normalized = normalize_schema(schema, field=field)
    return normalized if isinstance(normalized, Mapping) else schema


def function_tools(
    raw_tools: Any, tool_choice: Any, *, nested: bool, skip_types: Collection[str] = ()
) -> tuple[ToolSpec, ...]:
    """The request's function tools; `nested`: Chat's `{"type", "function": {...}}` shape,
    else the Responses API's flat one; entries of `skip_types` (the hosted tools the caller
    reads itself) are passed over. `tool_choice="none"` shows the model no tools."""
    if raw_tools is None:
        return ()
    tools: list[ToolSpec] = []
    for index, raw_tool in enumerate(as_list(raw_tools, "tools")):
        field = f"tools[{index}]"
        tool = as_mapping(raw_tool, field)
        kind = tool.get("type", "function" if nested else None)
        if kind in skip_types:
            continue
        if kind != "function":
            supported = ", ".join(["function", *sorted(skip_types)])
            raise HarmonyRequestError(
                f"{field}.type", f"unsupported tool type {kind!r}; use one of {supported}"
            )
        spec_field = f"{field}.function" if nested else field
        spec = as_mapping(tool.get("function"), spec_field) if nested else tool
        name = function_name(spec.get("name"), f"{spec_field}.name")
        if any(known.name == name for known in tools):
            raise HarmonyRequestError("tools", f"function {name!r} is defined twice")
        parameters = spec.get("parameters")
        tools.append(
            ToolSpec(
                name=name,
                description=optional_str(spec.get("description"), f"{spec_field}.description")
                or "",
                parameters=None
                if parameters is None
                else checked_schema(parameters, f"{spec_field}.parameters", normalize=True),
            )
        )
    return () if tool_choice == "none" else tuple(tools)


def response_format(
    kind: Any, name: Any, description: Any, schema: Any, field: str
) -> ResponseFormat | None:
    """`text` -> None; `json_object` -> any object; `json_schema` -> the named schema."""
    if kind is None or kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat(name="json_object", description=None, schema={"type": "object"})
    if kind == "json_schema":
        format_name = required_str(name, f"{field}.name")
        format_schema = (
            {"type": "object"}
            if schema is None
            else checked_schema(schema, f"{field}.schema", normalize=False)
        )
        return ResponseFormat(
            format_name, optional_str(description, f"{field}.description"), format_schema
        )
    raise HarmonyRequestError(
        f"{field}.type", f"unknown response format {kind!r}; use text, json_object or json_schema"
    )


def reasoning_effort(value: Any, field: str) -> ReasoningEffort:
    if value is None:
        return "medium"
    if isinstance(value, str) and value in _EFFORTS:
        return _EFFORTS[value]
    raise HarmonyRequestError(field, f"must be one of low, medium, high; got {value!r}")


def assemble_conversation(
    *,
    instructions: list[str],
    messages: list[HarmonyMessage],
    functions: tuple[ToolSpec, ...],
    response_formats: tuple[ResponseFormat, ...],
    effort: ReasoningEffort,
    date: str | None,
    builtin_tools: Collection[str],
    model_identity: str,
    tool_namespaces: Sequence[ToolNamespace] = (),
) -> Conversation:
    """The Conversation both API adapters end with; server options complete the system part
    (`tool_namespaces`: developer-message namespaces besides `functions`, MCP servers')."""
    developer = DeveloperSpec(
        instructions="\n\n".join(instructions) or None,
        functions=functions,
        response_formats=response_formats,
        namespaces=tuple(tool_namespaces),
    )
    system = SystemSpec(
        date=_checked_date(date),
        reasoning_effort=effort,
        model_identity=model_identity,
        builtin_namespaces=builtin_namespaces(builtin_tools),
    )
    return Conversation(system=system, developer=developer, messages=tuple(messages))


def _checked_date(date: str | None) -> str:
    if date is None:
        return datetime.datetime.now(datetime.UTC).date().isoformat()
    try:
        if _DATE.match(date):
            datetime.date.fromisoformat(date)
            return date
    except ValueError:
        pass
    raise HarmonyRequestError("date", f"must be a YYYY-MM-DD date, got {date!r}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__
