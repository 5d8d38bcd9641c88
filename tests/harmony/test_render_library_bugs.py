"""Where openai-harmony 0.0.8 renders something wrong, and what oss_serve renders instead.

Each test first shows the library's output (so a fixed library release makes the test fail
and the exclusion in the corpus test can go), then asserts ours.
"""

from __future__ import annotations

import pytest
from openai_harmony import (
    DeveloperContent,
    Message,
    Role,
    ToolDescription,
)

from oss_serve.common.vocab import o200k_harmony
from oss_serve.harmony import render_chat_request
from tests.harmony import oracle

pytestmark = pytest.mark.unit

DATE = "2025-06-28"


def _library_tool_block(parameters) -> str:
    developer = DeveloperContent.new().with_function_tools(
        [ToolDescription.new("f", "", parameters=parameters)]
    )
    enc = oracle.encoding()
    tokens = enc.render(Message.from_role_and_content(Role.DEVELOPER, developer))
    return enc.decode_utf8(tokens)


def _our_tool_block(parameters) -> str:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}],
    }
    text = o200k_harmony().decode(render_chat_request(body, date=DATE))
    start = text.index("<|start|>developer")
    return text[start : text.index("<|end|>", start) + len("<|end|>")]


def _params(properties: dict, **extra) -> dict:
    return {"type": "object", "properties": properties, **extra}


def test_anyof_optional_keeps_its_type_where_the_library_prints_any():
    # pydantic's Optional[str] = None; the library ignores anyOf and loses the type.
    schema = _params({"city": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}})
    assert "city?: any, // default: null" in _library_tool_block(schema)
    assert "city?: string | null, // default: null" in _our_tool_block(schema)


def test_anyof_union_prints_like_oneof_where_the_library_prints_any():
    schema = _params({"id": {"anyOf": [{"type": "integer"}, {"type": "string"}]}})
    assert "id?: any," in _library_tool_block(schema)
    assert "id?:\n | number\n | string\n," in _our_tool_block(schema)


def test_ref_to_defs_is_inlined_where_the_library_prints_any():
    # pydantic nested models are $ref into $defs.
    schema = _params(
        {"address": {"$ref": "#/$defs/Address"}},
        required=["address"],
        **{
            "$defs": {
                "Address": _params(
                    {"street": {"type": "string"}, "zip": {"type": "integer"}},
                    required=["street"],
                )
            }
        },
    )
    assert "address: any," in _library_tool_block(schema)
    assert "address: {\n    street: string,\n    zip?: number,\n    }," in _our_tool_block(schema)


def test_recursive_ref_stops_at_any_instead_of_looping():
    schema = _params(
        {"tree": {"$ref": "#/$defs/Node"}},
        **{
            "$defs": {
                "Node": _params({"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}})
            }
        },
    )
    assert "tree?: {\n    children?: any[],\n    }," in _our_tool_block(schema)


def test_allof_is_merged_where_the_library_prints_any():
    schema = _params(
        {"unit": {"allOf": [{"type": "string", "enum": ["c", "f"]}], "description": "Unit"}}
    )
    assert "unit?: any," in _library_tool_block(schema)
    assert '// Unit\nunit?: "c" | "f",' in _our_tool_block(schema)


def test_null_variant_of_oneof_becomes_nullable_where_the_library_prints_any():
    schema = _params({"n": {"oneOf": [{"type": "integer"}, {"type": "null"}]}})
    assert "n?:\n | number\n | any\n," in _library_tool_block(schema)
    assert "n?: number | null," in _our_tool_block(schema)


def test_float_default_is_printed_exactly_where_the_library_reads_a_neighbouring_double():
    # serde_json (built without float_roundtrip) parses 17-digit floats inexactly.
    schema = _params({"x": {"type": "number", "default": 1.0557603946483463e-146}})
    assert "default: 1.0557603946483465e-146" in _library_tool_block(schema)
    assert "default: 1.0557603946483463e-146" in _our_tool_block(schema)


def _chat(*messages: dict) -> dict:
    return {"messages": list(messages)}


USER_1 = {"role": "user", "content": "What is 2 + 2?"}
ANSWER_1 = {"role": "assistant", "reasoning": "Simple sum.", "content": "4"}
USER_2 = {"role": "user", "content": "Weather in SF?"}
CALL_2 = {
    "role": "assistant",
    "reasoning": "Need the weather tool.",
    "tool_calls": [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"SF"}'},
        }
    ],
}
RESULT_2 = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


def _library_text(body: dict) -> str:
    request = oracle.oracle_request(body, date=DATE)
    return oracle.encoding().decode_utf8(oracle.render(request, drop="library"))


def _our_text(body: dict) -> str:
    return o200k_harmony().decode(render_chat_request(body, date=DATE))


def test_finished_turn_reasoning_is_dropped_while_a_later_tool_call_waits():
    # The library only drops CoT when the conversation's last assistant message is final,
    # so a tool round in turn 2 drags turn 1's finished chain of thought back in.
    body = _chat(USER_1, ANSWER_1, USER_2, CALL_2, RESULT_2)
    assert "Simple sum." in _library_text(body)
    ours = _our_text(body)
    assert "Simple sum." not in ours
    assert "<|channel|>analysis<|message|>Need the weather tool.<|end|>" in ours  # current turn


def test_reasoning_of_every_finished_turn_is_dropped_not_only_before_the_first_final():
    # The library drops analysis only before the first final message of the conversation.
    answer_2 = {"role": "assistant", "reasoning": "Sunny it is.", "content": "Sunny."}
    body = _chat(
        USER_1, ANSWER_1, USER_2, CALL_2, RESULT_2, answer_2, {"role": "user", "content": "Thanks"}
    )
    library = _library_text(body)
    assert "Simple sum." not in library
    assert "Need the weather tool." in library and "Sunny it is." in library
    ours = _our_text(body)
    for reasoning in ("Simple sum.", "Need the weather tool.", "Sunny it is."):
        assert reasoning not in ours
    assert (
        "<|call|><|start|>functions.weather to=assistant<|channel|>commentary<|message|>sunny"
        in ours
    )
