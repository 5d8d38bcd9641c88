"""Render a whole conversation for training: token ids plus a mask of the assistant's tokens.

A conversation holds one or more assistant *completions*: runs of assistant messages that the
model writes in one generation, ending at `<|return|>` (a final answer) or `<|call|>` (a tool
call). Each completion becomes one training sequence whose prompt is exactly what
`render_chat_request` renders for the conversation up to that point (chain-of-thought of
finished turns dropped, the current date, tools, response formats), followed by the
completion as the model writes it: the final message ends with `<|return|>` instead of the
`<|end|>` it gets in history, and a tool call names its recipient after the channel
(`<|channel|>commentary to=functions.NAME <|constrain|>json`), as gpt-oss does. Only the
completion's tokens are marked for the loss. As in OpenAI's fine-tuning format, an assistant
message with `"weight": 0` is history only: the completion it starts is not trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from oss_serve.common.vocab import CALL, RETURN, START, o200k_harmony
from oss_serve.harmony.chat_input import conversation_from_chat
from oss_serve.harmony.conversation import (
    DEFAULT_MODEL_IDENTITY,
    Conversation,
    HarmonyMessage,
)
from oss_serve.harmony.errors import HarmonyRequestError
from oss_serve.harmony.render import render_conversation, render_messages
from oss_serve.harmony.request_fields import as_list, as_mapping
from oss_serve.harmony.tool_schema import ToolNamespace


@dataclass(frozen=True)
class TrainingSequence:
    """One prompt + completion; `assistant_mask[i]` is True where token i is the model's output."""

    token_ids: tuple[int, ...]
    assistant_mask: tuple[bool, ...]

    @property
    def prompt_len(self) -> int:
        """Tokens before the completion (the prompt the router would send)."""
        return (
            self.assistant_mask.index(True) if True in self.assistant_mask else len(self.token_ids)
        )


def render_chat_for_training(
    body: Any,
    *,
    date: str | None = None,
    builtin_tools: Collection[str] = (),
    tool_namespaces: Sequence[ToolNamespace] = (),
    model_identity: str = DEFAULT_MODEL_IDENTITY,
) -> list[TrainingSequence]:
    """One TrainingSequence per trained assistant completion of a Chat Completions-shaped body.

    The body is a request whose messages include the assistant's answers (`reasoning`,
    `content`, `tool_calls`, optional `weight` 0/1). Raises HarmonyRequestError naming a bad
    field, and ValueError when the conversation has nothing to learn from.
    """

    def convert(chat_body: Any) -> Conversation:
        return conversation_from_chat(
            chat_body,
            date=date,
            builtin_tools=builtin_tools,
            model_identity=model_identity,
            tool_namespaces=tool_namespaces,
        )

    conversation = convert(body)
    history_only = _history_only_starts(body, convert)
    sequences = render_conversation_for_training(conversation, history_only=history_only)
    if not sequences:
        raise ValueError("messages: the conversation has no assistant message to train on")
    return sequences


def render_conversation_for_training(
    conversation: Conversation, *, history_only: Collection[int] = ()
) -> list[TrainingSequence]:
    """The TrainingSequences of the completions in `conversation` (see module docstring),
    except those starting at a message index in `history_only`."""
    sequences = []
    messages = conversation.messages
    for start, stop in completion_spans(messages):
        if start in history_only:
            continue
        prompt = render_conversation(replace(conversation, messages=messages[:start]))
        completion = render_completion(messages[start:stop])
        sequences.append(
            TrainingSequence(
                token_ids=(*prompt, *completion),
                assistant_mask=(False,) * len(prompt) + (True,) * len(completion),
            )
        )
    return sequences


def _history_only_starts(body: Any, convert: Callable[[Any], Conversation]) -> set[int]:
    """Indices (in the harmony messages) of the messages made from `weight: 0` assistant
    messages: each chat message's first harmony index is counted off its prefix."""
    chat_messages = as_list(as_mapping(body, "body").get("messages"), "messages")
    zero_weight = []
    for index, raw in enumerate(chat_messages):
        weight = as_mapping(raw, f"messages[{index}]").get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise HarmonyRequestError(f"messages[{index}].weight", "must be 0 or 1")
        if weight == 0:
            zero_weight.append(index)
    starts = set()
    for index in zero_weight:
        if index == 0:
            starts.add(0)
            continue
        prefix = {**body, "messages": chat_messages[:index]}
        starts.add(len(convert(prefix).messages))
    return starts


def completion_spans(messages: Sequence[HarmonyMessage]) -> list[tuple[int, int]]:
    """[start, stop) of each run of assistant messages one generation writes.

    A generation stops at a tool call (`<|call|>`), so a run is also cut after each call.
    """
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for index, message in enumerate(messages):
        if message.author != "assistant":
            if start is not None:
                spans.append((start, index))
            start = None
            continue
        if start is None:
            start = index
        if message.recipient is not None:  # a tool call ends the generation
            spans.append((start, index + 1))
            start = None
    if start is not None:
        spans.append((start, len(messages)))
    return spans


def render_completion(messages: Sequence[HarmonyMessage]) -> list[int]:
    """Assistant messages as generated after the prompt's `<|start|>assistant`."""
    tokens: list[int] = []
    for index, message in enumerate(messages):
        is_last = index == len(messages) - 1
        rendered = render_messages([_as_generated(message)])
        if message.recipient is not None:
            rendered[-1] = CALL
        elif is_last and message.is_final:
            rendered[-1] = RETURN  # the end of the answer; history shows <|end|> instead
        tokens.extend(rendered)
    header = assistant_header()
    if tokens[: len(header)] != header:
        raise ValueError("an assistant completion must start with an assistant message")
    return tokens[len(header) :]


def assistant_header() -> list[int]:
    """`<|start|>assistant`: the end of every prompt, where the model takes over."""
    return [START, *o200k_harmony().encode_ordinary("assistant")]


def _as_generated(message: HarmonyMessage) -> HarmonyMessage:
    """gpt-oss writes a call's recipient after its channel: `<|channel|>commentary to=functions.f`.

    Rendered through the channel text (the pieces split at the space before `to=` either way),
    with the recipient cleared so the renderer does not also put it before the channel.
    """
    if message.recipient is None or message.channel is None:
        return message
    return replace(message, channel=f"{message.channel} to={message.recipient}", recipient=None)


__all__ = [
    "TrainingSequence",
    "assistant_header",
    "completion_spans",
    "render_chat_for_training",
    "render_completion",
    "render_conversation_for_training",
]
