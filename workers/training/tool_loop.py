"""Training text for turns in which the server ran the model's built-in tool calls.

Chat Completions has no message for a call to `python` or `browser.search`, so a training
conversation gives the current turn's model and tool messages as raw harmony messages:

    {"harmony": {"author": "assistant", "channel": "analysis", "recipient": "python",
                 "content_type": "code", "text": "print(37 * 91)"}}
    {"harmony": {"author": "python", "channel": "analysis", "recipient": "assistant",
                 "text": "3367\\n"}}

after the last user message, with the declared tools in the line's `builtin_tools`. The
router's tool loop never re-renders such a turn: each continuation's prompt is the previous
prompt, the tokens the model generated (a call ends with `<|call|>`, its recipient after
the channel) and the tool's message, then `<|start|>assistant` (`continue_after_tool`, the
router's own function). So the whole turn is ONE
training sequence, the token stream the replica sees at the last step, with the loss on
every stretch the model generated.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from oss_serve.harmony.chat_input import conversation_from_chat
from oss_serve.harmony.conversation import DEFAULT_MODEL_IDENTITY, HarmonyMessage
from oss_serve.harmony.render import continue_after_tool, render_conversation
from oss_serve.harmony.tool_schema import ToolNamespace
from oss_serve.harmony.training import TrainingSequence, completion_spans, render_completion

HARMONY_FIELD = "harmony"
_OPTIONAL_FIELDS = ("channel", "recipient", "content_type")


def is_tool_loop(body: Mapping[str, Any]) -> bool:
    """Whether a training conversation gives messages as raw harmony messages."""
    messages = body.get("messages")
    return isinstance(messages, list) and any(
        isinstance(message, Mapping) and HARMONY_FIELD in message for message in messages
    )


def render_tool_loop_for_training(
    body: Mapping[str, Any],
    *,
    date: str | None,
    builtin_tools: Collection[str],
    tool_namespaces: Sequence[ToolNamespace] = (),
    model_identity: str = DEFAULT_MODEL_IDENTITY,
) -> TrainingSequence:
    """The one sequence of a turn the server's tool loop ran (see module docstring).

    Raises ValueError naming the field when the raw messages do not form such a turn.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("messages: expected a list")
    loop_start = _loop_start(messages)
    history = {**body, "messages": messages[:loop_start]}
    conversation = conversation_from_chat(
        history,
        date=date,
        builtin_tools=builtin_tools,
        model_identity=model_identity,
        tool_namespaces=tool_namespaces,
    )
    turn = [
        _harmony_message(raw, f"messages[{loop_start + index}]")
        for index, raw in enumerate(messages[loop_start:])
    ]
    tokens = render_conversation(conversation)
    mask = [False] * len(tokens)
    spans = completion_spans(turn)
    if not spans or spans[0][0] != 0 or spans[-1][1] != len(turn) or not turn[-1].is_final:
        raise ValueError(
            f"messages[{loop_start}:]: the turn must start with the model and end with its "
            "final answer"
        )
    for (start, stop), (next_start, _) in itertools.pairwise(spans):
        field = f"messages[{loop_start + stop}]"
        if turn[stop - 1].recipient is None or next_start != stop + 1:
            raise ValueError(f"{field}: the model's turn goes on only after a call and its output")
        completion = render_completion(turn[start:stop])
        continued = continue_after_tool(tokens, completion, turn[stop])
        mask += [True] * len(completion) + [False] * (
            len(continued) - len(tokens) - len(completion)
        )
        tokens = continued
    completion = render_completion(turn[spans[-1][0] :])
    tokens += completion
    mask += [True] * len(completion)
    return TrainingSequence(tuple(tokens), tuple(mask))


def _loop_start(messages: Sequence[Any]) -> int:
    """Index after the last user message; every message from there on must be raw harmony."""
    users = [
        i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"
    ]
    if not users:
        raise ValueError("messages: a tool-loop turn needs a user message before it")
    start = users[-1] + 1
    for index in range(start, len(messages)):
        message = messages[index]
        if not isinstance(message, Mapping) or HARMONY_FIELD not in message:
            raise ValueError(
                f"messages[{index}]: after the last user message, give every message of the "
                f"tool-loop turn as {{{HARMONY_FIELD!r}: ...}}"
            )
    for index in range(start):
        if isinstance(messages[index], Mapping) and HARMONY_FIELD in messages[index]:
            raise ValueError(f"messages[{index}]: harmony messages only after the last user one")
    if start == len(messages):
        raise ValueError("messages: no tool-loop turn after the last user message")
    return start


def _harmony_message(raw: Mapping[str, Any], field: str) -> HarmonyMessage:
    spec = raw[HARMONY_FIELD]
    if not isinstance(spec, Mapping):
        raise ValueError(f"{field}.{HARMONY_FIELD}: expected an object")
    values: dict[str, Any] = {}
    for name in ("author", "text", *_OPTIONAL_FIELDS):
        value = spec.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{field}.{HARMONY_FIELD}.{name}: expected a string")
        values[name] = value
    unknown = sorted(set(spec) - {"author", "text", *_OPTIONAL_FIELDS})
    if unknown:
        raise ValueError(f"{field}.{HARMONY_FIELD}: unknown field(s) {unknown}")
    return replace(HarmonyMessage(author=values.pop("author"), text=values.pop("text")), **values)
