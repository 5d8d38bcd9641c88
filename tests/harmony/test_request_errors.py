"""Bad Chat Completions input -> HarmonyRequestError (a ValueError) naming the field."""

from __future__ import annotations

import math

import pytest

from oss_serve.harmony import HarmonyRequestError, render_chat_request

pytestmark = pytest.mark.unit

USER = {"role": "user", "content": "hi"}


def _tool(name="f", parameters=None, **function) -> dict:
    function = {"name": name, **function}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _call(call_id="c1", name="f", arguments="{}") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


CASES = [
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "unknown role 'robot'"),
    ({"messages": [{"content": "x"}]}, "messages[0].role", "unknown role None"),
    (
        {"messages": [USER, {"role": "tool", "tool_call_id": "nope", "content": "1"}]},
        "messages[1].tool_call_id",
        "no earlier assistant message",
    ),
    (
        {"messages": [USER, {"role": "tool", "content": "1"}]},
        "messages[1].tool_call_id",
        "is required",
    ),
    (
        {"messages": [{"role": "user", "content": 42}]},
        "messages[0].content",
        "must be a string or an array",
    ),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "is required"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0].type",
        "text only",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        "messages[0].content[0].text",
        "must be a string",
    ),
    (
        {"messages": [{"role": "user", "content": ["x"]}]},
        "messages[0].content[0]",
        "must be an object",
    ),
    ({"messages": []}, "messages", "at least one"),
    ({"messages": "hello"}, "messages", "must be an array"),
    ({}, "messages", "must be an array"),
    (
        {"messages": [USER], "tools": [_tool(parameters={"type": "object", "default": {1, 2}})]},
        "tools[0].function.parameters",
        "not JSON-serialisable",
    ),
    (
        {"messages": [USER], "tools": [_tool(parameters={"type": "number", "default": math.nan})]},
        "tools[0].function.parameters",
        "not JSON-serialisable",
    ),
    (
        {"messages": [USER], "tools": [_tool(parameters={"type": "object", "x": object()})]},
        "tools[0].function.parameters",
        "not JSON-serialisable",
    ),
    (
        {"messages": [USER], "tools": [_tool(parameters=["not", "an", "object"])]},
        "tools[0].function.parameters",
        "must be an object",
    ),
    (
        {"messages": [USER], "tools": [_tool(parameters={"$ref": "#/$defs/Missing"})]},
        "tools[0].function.parameters",
        "points to nothing",
    ),
    (
        {"messages": [USER], "tools": [_tool(parameters={"$ref": "https://x/schema.json"})]},
        "tools[0].function.parameters",
        "not local",
    ),
    (
        {"messages": [USER], "tools": [_tool(name="bad name")]},
        "tools[0].function.name",
        "not a valid function name",
    ),
    ({"messages": [USER], "tools": [_tool(), _tool()]}, "tools", "defined twice"),
    (
        {"messages": [USER], "tools": [{"type": "retrieval"}]},
        "tools[0].type",
        "unsupported tool type",
    ),
    (
        {"messages": [USER], "tools": [_tool(description=7)]},
        "tools[0].function.description",
        "must be a string",
    ),
    ({"messages": [USER], "reasoning_effort": "extreme"}, "reasoning_effort", "low, medium, high"),
    (
        {"messages": [USER], "response_format": {"type": "xml"}},
        "response_format.type",
        "unknown response format",
    ),
    (
        {
            "messages": [USER],
            "response_format": {"type": "json_schema", "json_schema": {"schema": {}}},
        },
        "response_format.json_schema.name",
        "is required",
    ),
    (
        {"messages": [USER, {"role": "assistant", "tool_calls": [_call(arguments={"a": 1})]}]},
        "messages[1].tool_calls[0].function.arguments",
        "must be a string",
    ),
    (
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
            ]
        },
        "messages[1].tool_calls[0].id",
        "is required",
    ),
    (
        {"messages": [USER, {"role": "assistant", "reasoning": ["x"], "content": "y"}]},
        "messages[1].reasoning",
        "must be a string",
    ),
    (
        {"messages": [USER, {"role": "assistant", "tool_calls": {"id": "c"}}]},
        "messages[1].tool_calls",
        "must be an array",
    ),
]


@pytest.mark.parametrize(("body", "field", "problem"), CASES)
def test_bad_request_raises_value_error_naming_the_field(body, field, problem):
    with pytest.raises(ValueError) as error:  # the API maps ValueError subclasses to 400
        render_chat_request(body, date="2025-06-28")
    assert isinstance(error.value, HarmonyRequestError)
    assert error.value.field == field
    assert problem in str(error.value)
    assert str(error.value).startswith(f"{field}: ")


def test_body_that_is_not_an_object_is_rejected():
    with pytest.raises(HarmonyRequestError, match="body: must be an object"):
        render_chat_request(["messages"], date="2025-06-28")


def test_bad_date_and_unknown_builtin_tool_are_rejected():
    with pytest.raises(HarmonyRequestError, match="date: must be a YYYY-MM-DD date"):
        render_chat_request({"messages": [USER]}, date="2025-13-40")
    with pytest.raises(HarmonyRequestError, match="unknown built-in tool"):
        render_chat_request({"messages": [USER]}, date="2025-06-28", builtin_tools=("shell",))


def test_schema_that_expands_without_bound_is_rejected_not_rendered_forever():
    # Each level references the next twice: 2**20 nodes if expanded naively.
    defs = {
        f"L{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/L{i + 1}"}, "b": {"$ref": f"#/$defs/L{i + 1}"}},
        }
        for i in range(20)
    }
    defs["L20"] = {"type": "string"}
    params = {"$ref": "#/$defs/L0", "$defs": defs}
    with pytest.raises(HarmonyRequestError, match="expands to more than"):
        render_chat_request(
            {"messages": [USER], "tools": [_tool(parameters=params)]}, date="2025-06-28"
        )
