"""render_responses_request: Responses API input items rendered like the oracle renders them."""

from __future__ import annotations

import pytest

from oss_serve.common.vocab import o200k_harmony
from oss_serve.harmony import (
    HarmonyRequestError,
    render_chat_request,
    render_responses_request,
)
from tests.harmony import oracle

pytestmark = pytest.mark.unit

DATE = "2025-06-28"
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_items_with_reasoning_and_function_calls_match_the_oracle():
    body = {
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in SF?"}]},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "Need the tool."}],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city":"SF"}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "description": "Weather.",
                "parameters": PARAMS,
            }
        ],
        "reasoning": {"effort": "high"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
    }
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in SF?"},
            {
                "role": "assistant",
                "reasoning": "Need the tool.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"SF"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather.",
                    "parameters": PARAMS,
                },
            }
        ],
        "reasoning_effort": "high",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}},
        },
    }
    tokens = render_responses_request(body, date=DATE)
    assert tokens == oracle.render(oracle.oracle_request(chat, date=DATE))
    assert tokens == render_chat_request(chat, date=DATE)


def test_string_input_is_one_user_message():
    text = o200k_harmony().decode(render_responses_request({"input": "hello"}, date=DATE))
    assert text.endswith("<|start|>user<|message|>hello<|end|><|start|>assistant")


def test_assistant_message_before_a_function_call_is_a_preamble():
    body = {
        "input": [
            {"role": "user", "content": "go"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "On it."}],
            },
            {"type": "function_call", "call_id": "c", "name": "run", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "done"},
            {"role": "assistant", "content": "Finished."},
        ]
    }
    text = o200k_harmony().decode(render_responses_request(body, date=DATE))
    assert "<|channel|>commentary<|message|>On it.<|end|>" in text
    assert "<|channel|>final<|message|>Finished.<|end|>" in text


def test_reasoning_summary_is_used_when_the_item_has_no_content():
    body = {
        "input": [
            {"role": "user", "content": "go"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "short"}]},
            {"type": "function_call", "call_id": "c", "name": "run", "arguments": "{}"},
        ]
    }
    text = o200k_harmony().decode(render_responses_request(body, date=DATE))
    assert "<|channel|>analysis<|message|>short<|end|>" in text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": [{"type": "file_search_call"}]}, "input[0].type"),
        (
            {"input": [{"type": "function_call_output", "call_id": "x", "output": "1"}]},
            "input[0].call_id",
        ),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": 5}, "input"),
        ({"input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"input": "x", "reasoning": {"effort": "max"}}, "reasoning.effort"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].type",
        ),
    ],
)
def test_bad_responses_input_names_the_field(body, field):
    with pytest.raises(HarmonyRequestError) as error:
        render_responses_request(body, date=DATE)
    assert error.value.field == field
