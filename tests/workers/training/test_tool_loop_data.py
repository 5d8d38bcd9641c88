"""Training text for a turn the server's tool loop ran: one sequence, exactly the tokens the
replica sees at the last step (the prompt the router renders, the model's tokens as generated,
each tool's message, `<|start|>assistant`), with the loss on the generated stretches only."""

from __future__ import annotations

import pytest

from oss_serve.common.vocab import o200k_harmony
from oss_serve.harmony import render_chat_request
from oss_serve.workers.training.data import DataError, render_conversations
from oss_serve.workers.training.demo_corpus import generate_corpus
from oss_serve.workers.training.demo_tool_chats import harmony

pytestmark = pytest.mark.unit

DATE = "2025-03-04"
QUESTION = {"role": "user", "content": "What is 37 times 91?"}
TURN = [
    harmony("assistant", "Let me run it.", channel="analysis"),
    harmony(
        "assistant", "print(37 * 91)", channel="analysis", recipient="python", content_type="code"
    ),
    harmony("python", "3367", channel="analysis", recipient="assistant"),
    harmony("assistant", "python printed 3367.", channel="analysis"),
    harmony("assistant", "The answer is 3367.", channel="final"),
]


def _line(messages: list[dict], tools: list[str] | None = None) -> dict:
    return {"date": DATE, "builtin_tools": tools or ["python"], "messages": messages}


def test_a_tool_loop_turn_is_one_sequence_of_what_the_replica_sees_at_the_last_step():
    [[sequence]] = render_conversations([_line([QUESTION, *TURN])])
    prompt = render_chat_request({"messages": [QUESTION]}, date=DATE, builtin_tools=["python"])
    assert list(sequence.token_ids[: len(prompt)]) == prompt  # as the router renders it
    assert sequence.prompt_len == len(prompt)
    decode = o200k_harmony().decode
    assert decode(list(sequence.token_ids[len(prompt) :])) == (
        "<|channel|>analysis<|message|>Let me run it.<|end|>"
        "<|start|>assistant<|channel|>analysis to=python code<|message|>print(37 * 91)<|call|>"
        "<|start|>python to=assistant<|channel|>analysis<|message|>3367<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>python printed 3367.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>The answer is 3367.<|return|>"
    )
    trained = [t for t, m in zip(sequence.token_ids, sequence.assistant_mask, strict=True) if m]
    assert decode(trained) == (
        "<|channel|>analysis<|message|>Let me run it.<|end|>"
        "<|start|>assistant<|channel|>analysis to=python code<|message|>print(37 * 91)<|call|>"
        "<|channel|>analysis<|message|>python printed 3367.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>The answer is 3367.<|return|>"
    )


def test_earlier_turns_are_history_as_the_router_renders_them():
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "reasoning": "A greeting.", "content": "Hello!"},
        QUESTION,
    ]
    [[sequence]] = render_conversations([_line([*history, *TURN], ["browser", "python"])])
    prompt = render_chat_request(
        {"messages": history}, date=DATE, builtin_tools=["python", "browser"]
    )
    assert list(sequence.token_ids[: len(prompt)]) == prompt
    assert "A greeting." not in o200k_harmony().decode(list(sequence.token_ids))


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ([TURN[0], QUESTION, *TURN[1:]], "messages[0]: harmony messages only after the last user"),
        ([QUESTION, *TURN[:3]], "end with its final answer"),
        (
            [QUESTION, TURN[0], TURN[2], *TURN[3:]],
            "messages[2]: the model's turn goes on only after",
        ),
        ([QUESTION, TURN[0], {"role": "assistant", "content": "x"}], "messages[2]: after the last"),
        ([QUESTION, harmony("assistant", 3)], "messages[1].harmony.text: expected a string"),
        ([QUESTION, {"harmony": {**TURN[4]["harmony"], "colour": "red"}}], "unknown field"),
        ([QUESTION, *TURN[:4], harmony("python", "x", channel="analysis")], "final answer"),
    ],
)
def test_a_malformed_tool_loop_turn_is_refused_naming_the_conversation_and_field(messages, says):
    with pytest.raises(DataError, match="conversation 1: ") as caught:
        render_conversations([_line(messages)])
    assert says in str(caught.value)


def test_an_unknown_builtin_tool_is_refused():
    with pytest.raises(DataError, match="builtin_tools"):
        render_conversations([_line([QUESTION, *TURN], ["calculator"])])


def test_the_demo_corpus_renders_and_holds_python_and_browser_turns():
    corpus = generate_corpus(300, seed=3)
    rendered = render_conversations(corpus)
    text = o200k_harmony().decode
    loops = [seqs[0] for line, seqs in zip(corpus, rendered, strict=True) if "harmony" in str(line)]
    decoded = [text(list(seq.token_ids)) for seq in loops]
    assert any("to=python code<|message|>print(" in d for d in decoded)
    assert any('to=browser.search code<|message|>{"query": ' in d for d in decoded)
    assert all(d.endswith("<|return|>") for d in decoded)
    assert any('to=dice.roll_dice <|constrain|>json<|message|>{"sides": ' in d for d in decoded)


DICE_ENTRY = {
    "server_label": "dice",
    "tools": [
        {
            "name": "roll_dice",
            "description": "Roll a die.",
            "input_schema": {"type": "object", "properties": {"sides": {"type": "integer"}}},
        }
    ],
}
DICE_TURN = [
    harmony(
        "assistant",
        '{"sides": 6}',
        channel="commentary",
        recipient="dice.roll_dice",
        content_type="<|constrain|>json",
    ),
    harmony("dice.roll_dice", "4", channel="commentary", recipient="assistant"),
    harmony("assistant", "You rolled a 4.", channel="final"),
]


def test_an_mcp_servers_tools_are_declared_as_a_namespace_the_call_names():
    line = {"date": DATE, "mcp_servers": [DICE_ENTRY], "messages": [QUESTION, *DICE_TURN]}
    [[sequence]] = render_conversations([line])
    text = o200k_harmony().decode(list(sequence.token_ids))
    assert "## dice\n\nnamespace dice {\n\n// Roll a die.\ntype roll_dice = (_: {" in text
    assert "<|start|>dice.roll_dice to=assistant<|channel|>commentary<|message|>4<|end|>" in text


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({**DICE_ENTRY, "server_label": 3}, "mcp_servers[0].server_label"),
        ({**DICE_ENTRY, "tools": [{"name": "roll dice", "input_schema": {}}]}, "tools[0].name"),
        ({**DICE_ENTRY, "tools": [{"name": "roll_dice"}]}, "tools[0].input_schema"),
    ],
)
def test_a_malformed_mcp_servers_entry_is_refused_naming_the_field(entry, field):
    line = {"date": DATE, "mcp_servers": [entry], "messages": [QUESTION, *DICE_TURN]}
    with pytest.raises(DataError, match="conversation 1: ") as caught:
        render_conversations([line])
    assert field in str(caught.value)
