"""The TypeScript-like tool block: layout details against openai-harmony, and normalisation."""

from __future__ import annotations

import copy

import pytest
from openai_harmony import DeveloperContent, Message, Role, ToolDescription

from oss_serve.harmony.schema_normalize import normalize_schema
from oss_serve.harmony.tool_schema import (
    ToolNamespace,
    ToolSpec,
    json_compact,
    render_tools_section,
    rust_lines,
)
from tests.harmony import oracle

pytestmark = pytest.mark.unit

# The library's own "kitchensink" shape plus the corners of its layout code.
KITCHENSINK = {
    "description": "params object",
    "type": "object",
    "properties": {
        "string": {
            "type": "string",
            "title": "STRING",
            "description": "A string",
            "examples": ["hello", "world"],
        },
        "string_nullable": {
            "type": "string",
            "nullable": True,
            "description": "A nullable string",
            "default": "the default",
        },
        "string_enum": {"type": "string", "enum": ["a", "b", "c"]},
        "enum_default": {"type": "string", "enum": ["x", "y"], "default": "y"},
        "oneof_string_or_number": {
            "oneOf": [
                {"type": "string", "default": "default_string_in_oneof"},
                {"type": "number", "description": "numbers can happen too"},
            ],
            "description": "a oneof",
            "default": 20,
        },
        "oneof_same_desc": {
            "oneOf": [
                {"type": "string", "description": "same"},
                {"type": "integer", "description": "other", "enum": [1]},
            ],
            "description": "same",
        },
        "nested": {
            "type": "object",
            "description": "nested object",
            "properties": {
                "deep": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"k": {"type": "boolean"}}},
                }
            },
        },
        "multi": {"type": ["integer", "string", 5]},
        "untyped": {"default": {"a": [1, 2.5, None, 'q\n"x"']}},
        "arr": {"type": "array"},
        "weird_type": {"type": "date"},
        "examples_without_strings": {"type": "integer", "examples": [1, 2]},
        "items_not_object": {"type": "array", "items": [1]},
    },
    "required": ["string_enum", "nested"],
}


def _library(tools: list[ToolSpec]) -> str:
    descriptions = [ToolDescription.new(t.name, t.description, t.parameters) for t in tools]
    developer = DeveloperContent.new().with_function_tools(descriptions)
    enc = oracle.encoding()
    text = enc.decode_utf8(enc.render(Message.from_role_and_content(Role.DEVELOPER, developer)))
    return text.removeprefix("<|start|>developer<|message|>").removesuffix("<|end|>")


def _ours(tools: list[ToolSpec]) -> str:
    return render_tools_section([ToolNamespace("functions", None, tuple(tools))])


@pytest.mark.parametrize(
    "tools",
    [
        [ToolSpec("kitchensink", "A function with various complex schemas.", KITCHENSINK)],
        [ToolSpec("no_params", "", None), ToolSpec("empty", "line1\r\nline2\n\nline4\n", {})],
        [
            ToolSpec(
                "top_oneof",
                "x",
                {
                    "oneOf": [
                        {"type": "string", "description": "s", "default": "d"},
                        {"type": "string", "enum": ["e"], "default": "e"},
                    ]
                },
            )
        ],
        [
            ToolSpec(
                "arr_of_oneof",
                "x",
                {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "null"}]}},
            )
        ],
    ],
    ids=["kitchensink", "no-params-and-empty", "top-level-oneof", "array-of-oneof"],
)
def test_tool_block_layout_equals_the_library(tools):
    assert _ours(tools) == _library(tools)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -7,
        2**63 - 1,
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        0.0,
        -0.0,
        1.0,
        1.5,
        0.1,
        1e15,
        1e16,
        1.5e16,
        123456789.125,
        1e-5,
        1e-6,
        1.5e-7,
        1e22,
        1e300,
        5e-324,
        'tab\tquote"back\\slash\u0001é',
        [1, {"a": None}],
        True,
        None,
    ],
)
def test_json_defaults_print_like_serde_json(value):
    schema = {"type": "object", "properties": {"v": {"type": "integer", "default": value}}}
    expected = _library([ToolSpec("f", "", schema)])
    assert _ours([ToolSpec("f", "", schema)]) == expected
    assert f"default: {json_compact(value)}" in expected or isinstance(value, str)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("", []),
        ("a", ["a"]),
        ("a\n", ["a"]),
        ("\n", [""]),
        ("a\n\nb", ["a", "", "b"]),
        ("a\r\nb\r", ["a", "b\r"]),  # Rust keeps a trailing "\r" in the last line
        ("\r", ["\r"]),
        ("a\rb", ["a\rb"]),
    ],
)
def test_description_lines_split_like_rust(text, lines):
    assert rust_lines(text) == lines


def test_normalize_does_not_modify_its_input_and_is_idempotent():
    schema = {
        "type": "object",
        "properties": {"a": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}},
        "$defs": {"A": {"type": "object", "properties": {"b": {"allOf": [{"type": "string"}]}}}},
    }
    before = copy.deepcopy(schema)
    once = normalize_schema(schema, field="p")
    assert schema == before
    assert normalize_schema(once, field="p") == once
    assert once["properties"]["a"] == {
        "type": "object",
        "properties": {"b": {"type": "string"}},
        "nullable": True,
    }


def test_sibling_keys_of_a_ref_override_the_target():
    schema = {
        "$ref": "#/$defs/A",
        "description": "mine",
        "$defs": {"A": {"type": "string", "description": "theirs"}},
    }
    assert normalize_schema(schema, field="p")["description"] == "mine"


def test_allof_merges_properties_and_required():
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
        ]
    }
    merged = normalize_schema(schema, field="p")
    assert merged == {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
