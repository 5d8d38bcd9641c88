"""HarmonyStreamParser / parse_completion: round trips, library parity, streaming, robustness."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_harmony import Role

from oss_serve.common.vocab import CALL, END, ENDOFTEXT, RETURN, START, o200k_harmony
from oss_serve.harmony import (
    BuiltinToolCall,
    ContentDelta,
    HarmonyStreamParser,
    MessageEnd,
    ReasoningDelta,
    ToolCallArgumentsDelta,
    ToolCallStart,
    parse_completion,
    stop_token_ids,
)
from oss_serve.harmony.chat_input import conversation_from_chat
from oss_serve.harmony.events import coalesce
from oss_serve.harmony.render import render_messages
from tests.harmony import oracle
from tests.harmony.strategies import JSON_VALUE, NAME, PROPERTY, TEXT

pytestmark = pytest.mark.unit

HYPOTHESIS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _tokens(text: str) -> list[int]:
    return o200k_harmony().encode(text, allowed_special="all")


@st.composite
def assistant_messages(draw) -> dict:
    """One Chat Completions assistant message: reasoning, content and/or tool calls."""
    message: dict = {"role": "assistant"}
    if draw(st.booleans()):
        message["reasoning"] = draw(TEXT)
    calls = []
    for index in range(draw(st.integers(0, 3))):
        arguments = draw(st.dictionaries(PROPERTY, JSON_VALUE, max_size=3))
        calls.append(
            {
                "id": f"c{index}",
                "type": "function",
                "function": {"name": draw(NAME), "arguments": _json(arguments)},
            }
        )
    if calls:
        message["tool_calls"] = calls
    if not calls or draw(st.booleans()):
        message["content"] = draw(TEXT)
    return message


def _json(value) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _completion_tokens(message: dict) -> list[int]:
    """What the model would generate for this message after the `<|start|>assistant` prompt."""
    conversation = conversation_from_chat(
        {"messages": [{"role": "user", "content": "q"}, message]},
        date="2025-06-28",
        builtin_tools=(),
        model_identity="x",
    )
    tokens = render_messages(conversation.messages[1:])
    assert tokens[0] == START
    tokens = tokens[2:]  # the prompt already ends with <|start|>assistant
    if tokens[-1] == END:
        tokens[-1] = RETURN  # a final answer ends generation with <|return|>
    return tokens


def _messages_from_events(events) -> list[tuple[str | None, str | None, str]]:
    """(channel, recipient, text) per message, folded from our events."""
    out, text = [], []
    for event in events:
        if isinstance(event, (ReasoningDelta, ContentDelta, ToolCallArgumentsDelta)):
            text.append(event.text)
        elif isinstance(event, BuiltinToolCall):
            text.append(event.arguments)
        elif isinstance(event, MessageEnd):
            out.append((event.channel, event.recipient, "".join(text)))
            text = []
    return out


def _split_generations(tokens: list[int]) -> list[list[int]]:
    """Generation stops at each <|call|>: one assistant message with n calls is n completions."""
    pieces, current = [], []
    for token in tokens:
        current.append(token)
        if token == CALL:
            pieces.append(current)
            current = []
    return [*pieces, current] if current else pieces


@HYPOTHESIS
@given(message=assistant_messages())
def test_rendered_assistant_message_parses_back_to_the_same_fields(message):
    results = [
        parse_completion(generation, tool_call_id_prefix=f"call_{index}_")
        for index, generation in enumerate(_split_generations(_completion_tokens(message)))
    ]
    assert "".join(r.reasoning for r in results) == message.get("reasoning", "")
    assert "".join(r.content for r in results) == message.get("content", "")
    calls = message.get("tool_calls", [])
    parsed = [call for r in results for call in r.tool_calls]
    assert [(c.name, c.arguments) for c in parsed] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in calls
    ]
    assert [r.finish_reason for r in results] == ["tool_calls"] * len(calls) or [
        r.finish_reason for r in results
    ] == ["stop"]


@HYPOTHESIS
@given(message=assistant_messages())
def test_parsed_messages_equal_what_openai_harmony_parses(message):
    tokens = _split_generations(_completion_tokens(message))[0]
    library = oracle.encoding().parse_messages_from_completion_tokens(tokens[:-1], Role.ASSISTANT)
    expected = [(m.channel, m.recipient, m.content[0].text) for m in library]
    parser = HarmonyStreamParser()
    assert _messages_from_events(parser.feed(tokens)) == expected


def _feed_in_chunks(tokens: list[int], sizes: list[int]):
    parser = HarmonyStreamParser(tool_call_id_prefix="id", function_names={"known"})
    events, position = [], 0
    for size in sizes:
        events += parser.feed(tokens[position : position + size])
        position += size
    events += parser.feed(tokens[position:])
    events += parser.finish()
    return coalesce(events), parser.result


# Pieces of harmony output, well formed and not: the parser must survive any mix.
_FRAGMENTS = [
    "<|channel|>analysis<|message|>think",
    "<|end|>",
    "<|start|>assistant<|channel|>final<|message|>héllo 世界 🙂",
    '<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>{"a": 1}',
    "<|channel|>commentary to=functions.g<|constrain|>json<|message|>{}",
    "<|channel|>analysis to=python<|message|>print(1)",
    "<|start|>assistant to=known<|channel|>commentary json<|message|>[]",
    "<|channel|>––commentary<|message|>x",
    "<|constrain|>",
    "<|message|>",
    "<|call|>",
    "<|return|>",
    "<|start|>",
    "plain words",
    "<|reserved_200100|>",
]


@st.composite
def token_soup(draw) -> list[int]:
    tokens: list[int] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 5))
        if kind <= 3:
            tokens += _tokens(draw(st.sampled_from(_FRAGMENTS)))
        elif kind == 4:
            tokens += draw(st.lists(st.integers(0, 201_100), max_size=4))
        else:
            tokens += o200k_harmony().encode_ordinary(draw(TEXT))
    return tokens


@HYPOTHESIS
@given(tokens=token_soup(), data=st.data())
def test_streaming_one_token_at_a_time_or_in_chunks_equals_one_shot(tokens, data):
    one_shot = _feed_in_chunks(tokens, [])
    singles = _feed_in_chunks(tokens, [1] * len(tokens))
    sizes = data.draw(st.lists(st.integers(0, 7), max_size=len(tokens)))
    chunked = _feed_in_chunks(tokens, sizes)
    assert singles == one_shot
    assert chunked == one_shot
    assert one_shot[1].finish_reason in ("stop", "tool_calls", "length")


def test_multibyte_characters_split_across_tokens_stream_whole():
    text = "🙂👍🏽 日本語 naïve"
    tokens = _tokens("<|channel|>final<|message|>") + o200k_harmony().encode_ordinary(text)
    parser = HarmonyStreamParser()
    deltas = [e.text for t in tokens for e in parser.feed([t]) if isinstance(e, ContentDelta)]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def _parse(text: str, **kwargs):
    return parse_completion(_tokens(text), tool_call_id_prefix="id", **kwargs)


@pytest.mark.parametrize(
    "text",
    [
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{}<|call|>",
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{}<|call|>",
        "<|channel|>commentary to=functions.get_weather<|constrain|>json<|message|>{}<|call|>",
        "<|channel|>commentary to=functions.get_weather json<|message|>{}<|call|>",
        "<|channel|>commentary to=functions.get_weather<|message|>{}<|call|>",
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|> json<|message|>{}<|call|>",
        # Right after the `<|start|>assistant` prompt: the recipient comes first.
        " to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{}<|call|>",
    ],
    ids=[
        "after-channel",
        "before-channel",
        "constrain-glued",
        "json-no-constrain",
        "no-type",
        "constrain-space",
        "recipient-first-after-prompt",
    ],
)
def test_recipient_before_or_after_the_channel_and_constrain_variants_give_a_tool_call(text):
    result = _parse(text)
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", "{}")]
    assert result.content == result.reasoning == ""
    assert result.finish_reason == "tool_calls"


def test_events_of_a_tool_call_turn_in_order():
    text = (
        "<|channel|>analysis<|message|>Need it.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>Checking.<|end|>"
        '<|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"x":1}<|call|>'
    )
    events = HarmonyStreamParser(tool_call_id_prefix="id").feed(_tokens(text))
    assert events == [
        ReasoningDelta("Need it."),
        MessageEnd("analysis", None, None),
        ContentDelta("Checking.", "commentary"),
        MessageEnd("commentary", None, None),
        ToolCallStart(0, "id0", "f"),
        ToolCallArgumentsDelta(0, '{"x":1}'),
        MessageEnd("commentary", "functions.f", "tool_calls"),
    ]


@pytest.mark.parametrize(
    ("text", "reasoning", "content", "finish"),
    [
        # The model's first message has no <|start|>; later ones may miss it too.
        (
            "<|channel|>analysis<|message|>a<|end|><|channel|>final<|message|>b<|return|>",
            "a",
            "b",
            "stop",
        ),
        # openai/harmony#38: junk before the channel name.
        ("<|channel|>––final<|message|>b<|return|>", "", "b", "stop"),
        # vllm#22519 / openai/harmony#68: unexpected tokens where <|start|> belongs.
        (
            "<|channel|>analysis<|message|>a<|end|><|constrain|><|channel|>final<|message|>b<|return|>",
            "a",
            "b",
            "stop",
        ),
        # A new message without <|end|> before it.
        (
            "<|channel|>analysis<|message|>a<|start|>assistant<|channel|>final<|message|>b<|return|>",
            "a",
            "b",
            "stop",
        ),
        # Text with no header at all: content, not an error.
        ("<|channel|>analysis<|message|>a<|end|>loose text<|return|>", "a", "loose text", "stop"),
        ("just text<|return|>", "", "just text", "stop"),
        # Header that never reaches <|message|>: the unexplained text is content.
        ("<|channel|>final The answer is 4<|return|>", "", "The answer is 4", "stop"),
        # Special tokens inside content never become text.
        (
            "<|channel|>final<|message|>a<|message|>b<|constrain|>c<|reserved_200013|>d<|return|>",
            "",
            "abcd",
            "stop",
        ),
        # No channel: treat as final.
        ("<|start|>assistant<|message|>x<|return|>", "", "x", "stop"),
        # <|end|> is not a stop; the generation ran out of tokens.
        ("<|channel|>analysis<|message|>a<|end|>", "a", "", "length"),
        ("<|channel|>final<|message|>partial", "", "partial", "length"),
        # <|endoftext|> stops; anything after a stop is ignored.
        (
            "<|channel|>final<|message|>x<|endoftext|>more<|channel|>final<|message|>y",
            "",
            "x",
            "stop",
        ),
        # <|call|> on a message that is not a call.
        ("<|channel|>final<|message|>x<|call|>", "", "x", "stop"),
        # A non-assistant author (hallucinated tool output) is shown, not lost.
        (
            "<|start|>functions.f to=assistant<|channel|>commentary<|message|>out<|end|>",
            "",
            "out",
            "length",
        ),
    ],
)
def test_malformed_output_becomes_text_without_header_leaks(text, reasoning, content, finish):
    result = _parse(text)
    assert (result.reasoning, result.content, result.finish_reason) == (reasoning, content, finish)
    assert result.tool_calls == []


def test_long_header_without_message_is_streamed_as_content_after_the_limit():
    words = " ".join(f"w{i}" for i in range(80))
    tokens = _tokens("<|channel|>final ") + o200k_harmony().encode_ordinary(words)
    parser = HarmonyStreamParser(max_header_tokens=16)
    streamed = "".join(e.text for e in parser.feed(tokens) if isinstance(e, ContentDelta))
    assert streamed == words  # delivered before any stop token arrives


def test_unknown_and_builtin_recipients_are_builtin_calls_unless_a_known_function():
    result = _parse(
        '<|channel|>analysis to=browser.search<|constrain|>json<|message|>{"query":"x"}<|call|>'
    )
    assert result.builtin_tool_calls == [
        BuiltinToolCall("browser.search", "analysis", '{"query":"x"}')
    ]
    assert result.finish_reason == "tool_calls"
    unknown = "<|channel|>commentary to=get_weather<|message|>{}<|call|>"
    assert _parse(unknown).builtin_tool_calls[0].recipient == "get_weather"
    known = _parse(unknown, function_names={"get_weather"})
    assert [(c.name, c.arguments) for c in known.tool_calls] == [("get_weather", "{}")]


def test_out_of_range_token_ids_are_ignored():
    tokens = [*_tokens("<|channel|>final<|message|>a"), -1, 201088, 10**9, *_tokens("b<|return|>")]
    assert parse_completion(tokens).content == "ab"


def test_reasoning_tokens_are_counted():
    reasoning = o200k_harmony().encode_ordinary("one two three")
    tokens = _tokens("<|channel|>analysis<|message|>") + reasoning + _tokens("<|end|>")
    assert parse_completion(tokens).reasoning_tokens == len(reasoning)


def test_default_tool_call_ids_are_unique_per_completion():
    text = "<|channel|>commentary to=functions.f<|message|>{}<|call|>"
    first, second = _parse_default(text), _parse_default(text)
    assert first != second and first.startswith("call_")


def _parse_default(text: str) -> str:
    return parse_completion(_tokens(text)).tool_calls[0].id


def test_stop_tokens_are_return_call_and_endoftext_never_end():
    library = set(oracle.encoding().stop_tokens_for_assistant_actions())
    assert set(stop_token_ids()) == library | {ENDOFTEXT}
    assert {RETURN, CALL} <= set(stop_token_ids())
    assert END not in stop_token_ids()


def test_random_chunking_of_a_long_completion_is_deterministic():
    text = "".join(_FRAGMENTS) * 3
    tokens = _tokens(text)
    rng = random.Random(7)
    sizes = [rng.randint(1, 9) for _ in range(len(tokens))]
    assert _feed_in_chunks(tokens, sizes) == _feed_in_chunks(tokens, [])
