"""Rendering conversations for training: each completion's prompt is what the router renders,
the completion is what gpt-oss writes, and only the completion is marked for the loss."""

from __future__ import annotations

import json

import pytest
from openai_harmony import Conversation, Message, RenderConversationConfig, Role

from oss_serve.common.vocab import CALL, RETURN, o200k_harmony
from oss_serve.harmony import (
    HarmonyRequestError,
    parse_completion,
    render_chat_request,
)
from oss_serve.harmony.training import render_chat_for_training
from oss_serve.workers.training.demo_corpus import WEATHER_TOOL, generate_corpus
from oss_serve.workers.training.tool_loop import is_tool_loop
from tests.harmony import oracle

pytestmark = pytest.mark.unit

DATE = "2025-06-28"
CALL_ID = "call_1"


def _weather_conversation() -> dict:
    """Two user turns: reasoning + tool call, tool result, reasoning + answer; then a new
    question answered with reasoning + final."""
    call = {
        "id": CALL_ID,
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"location": "Paris"})},
    }
    return {
        "tools": [WEATHER_TOOL],
        "reasoning_effort": "high",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "reasoning": "Call the tool.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": CALL_ID, "content": '{"temperature": 21}'},
            {"role": "assistant", "reasoning": "It says 21.", "content": "It is 21°C."},
            {"role": "user", "content": "And 2 + 2?"},
            {"role": "assistant", "reasoning": "2 + 2 = 4.", "content": "4"},
        ],
    }


def _assistant_indices(body: dict) -> list[int]:
    """Chat indices of the trained assistant messages (weight 0 = history only)."""
    return [
        i
        for i, m in enumerate(body["messages"])
        if m["role"] == "assistant" and m.get("weight", 1) == 1
    ]


def test_each_completion_prompt_is_exactly_what_the_router_renders_for_that_turn():
    body = _weather_conversation()
    sequences = render_chat_for_training(body, date=DATE)
    assert len(sequences) == 3
    for sequence, index in zip(sequences, _assistant_indices(body), strict=True):
        truncated = {**body, "messages": body["messages"][:index]}
        prompt = list(sequence.token_ids[: sequence.prompt_len])
        assert prompt == render_chat_request(truncated, date=DATE)


def test_every_demo_corpus_prompt_matches_the_router_rendering():
    for body in generate_corpus(60, seed=3):
        body = dict(body)
        date = body.pop("date")
        tools = body.pop("builtin_tools", [])
        if is_tool_loop(body):
            continue  # one sequence for a whole tool-loop turn: tests/workers/training
        sequences = render_chat_for_training(body, date=date, builtin_tools=tools)
        for sequence, index in zip(sequences, _assistant_indices(body), strict=True):
            truncated = {**body, "messages": body["messages"][:index]}
            assert list(sequence.token_ids[: sequence.prompt_len]) == render_chat_request(
                truncated, date=date, builtin_tools=tools
            )


def test_mask_covers_exactly_the_completion_which_ends_in_return_or_call():
    for sequence in render_chat_for_training(_weather_conversation(), date=DATE):
        mask = sequence.assistant_mask
        assert len(mask) == len(sequence.token_ids)
        assert not any(mask[: sequence.prompt_len])
        assert all(mask[sequence.prompt_len :])
        assert sequence.token_ids[-1] in (RETURN, CALL)


def test_tool_call_completion_names_the_recipient_after_the_channel_and_parses_as_a_call():
    call_sequence = render_chat_for_training(_weather_conversation(), date=DATE)[0]
    completion = list(call_sequence.token_ids[call_sequence.prompt_len :])
    assert o200k_harmony().decode(completion) == (
        "<|channel|>analysis<|message|>Call the tool.<|end|><|start|>assistant<|channel|>"
        'commentary to=functions.get_weather <|constrain|>json<|message|>{"location": "Paris"}'
        "<|call|>"
    )
    parsed = parse_completion(completion, function_names=("get_weather",))
    assert parsed.reasoning == "Call the tool."
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [
        ("get_weather", {"location": "Paris"})
    ]
    assert parsed.finish_reason == "tool_calls"


def test_final_completions_parse_back_to_the_reasoning_and_answer():
    sequences = render_chat_for_training(_weather_conversation(), date=DATE)
    answers = [parse_completion(list(s.token_ids[s.prompt_len :])) for s in sequences[1:]]
    assert [(a.reasoning, a.content, a.finish_reason) for a in answers] == [
        ("It says 21.", "It is 21°C.", "stop"),
        ("2 + 2 = 4.", "4", "stop"),
    ]


def test_last_completion_equals_openai_harmony_training_rendering():
    """The library renders a conversation for training (final message -> <|return|>); with the
    turn rule applied to history and its own dropping off, it must give the same tokens."""
    body = _weather_conversation()
    body = {**body, "tools": None}
    body["messages"] = [body["messages"][0], body["messages"][5], body["messages"][6]]
    body["messages"].insert(1, {"role": "user", "content": "Hi"})
    body["messages"].insert(2, {"role": "assistant", "reasoning": "Greet.", "content": "Hello!"})
    ours = render_chat_for_training(body, date=DATE)[-1].token_ids
    request = oracle.oracle_request(body, date=DATE)
    *history, last_analysis, last_final = request.messages
    messages = [*oracle.turn_rule_kept(history), last_analysis, last_final]
    head = [
        Message.from_role_and_content(Role.SYSTEM, request.system),
        Message.from_role_and_content(Role.DEVELOPER, request.developer),
    ]
    expected = oracle.encoding().render_conversation_for_training(
        Conversation.from_messages([*head, *messages]),
        RenderConversationConfig(auto_drop_analysis=False),
    )
    assert list(ours) == expected


def test_a_conversation_without_assistant_messages_is_refused():
    with pytest.raises(ValueError, match="no assistant message"):
        render_chat_for_training({"messages": [{"role": "user", "content": "hi"}]}, date=DATE)


def test_bad_fields_are_named():
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}
    with pytest.raises(HarmonyRequestError) as err:
        render_chat_for_training(body, date=DATE)
    assert err.value.field == "messages[1].role"


def test_a_zero_weight_assistant_message_is_history_but_not_trained():
    body = _weather_conversation()
    body["messages"][2] = {**body["messages"][2], "weight": 0}
    sequences = render_chat_for_training(body, date=DATE)
    assert len(sequences) == 2  # the call's completion is not trained on
    for sequence, index in zip(sequences, _assistant_indices(body), strict=True):
        truncated = {**body, "messages": body["messages"][:index]}
        assert list(sequence.token_ids[: sequence.prompt_len]) == render_chat_request(
            truncated, date=DATE
        )


def test_weights_other_than_zero_or_one_are_refused():
    body = _weather_conversation()
    body["messages"][4] = {**body["messages"][4], "weight": 0.5}
    with pytest.raises(HarmonyRequestError) as err:
        render_chat_for_training(body, date=DATE)
    assert err.value.field == "messages[4].weight"
