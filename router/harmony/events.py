"""What the harmony parser reports while the model generates, and the one-shot result.

Deltas carry only new text; a tool call is announced once (`ToolCallStart`) and then
streams its JSON arguments; `MessageEnd.stop_reason` says why a message ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

StopReason = Literal["stop", "tool_calls", "length"]


@dataclass(frozen=True)
class ReasoningDelta:
    """Chain-of-thought text (the analysis channel)."""

    text: str


@dataclass(frozen=True)
class ContentDelta:
    """User-visible text: the final channel, or a commentary-channel preamble to tool calls."""

    text: str
    channel: str = "final"


@dataclass(frozen=True)
class ToolCallStart:
    """A call to function `name` begins; `index` counts the completion's function calls."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgumentsDelta:
    index: int
    text: str


@dataclass(frozen=True)
class BuiltinToolCall:
    """A complete call to a recipient outside `functions.` (browser.*, python, or unknown)."""

    recipient: str
    channel: str | None
    arguments: str


@dataclass(frozen=True)
class MessageEnd:
    """A harmony message ended: `stop_reason` None for `<|end|>` (more may follow), else the
    completion's finish reason (`stop`, `tool_calls`, or `length` when cut off)."""

    channel: str | None
    recipient: str | None
    stop_reason: StopReason | None


HarmonyEvent = (
    ReasoningDelta
    | ContentDelta
    | ToolCallStart
    | ToolCallArgumentsDelta
    | BuiltinToolCall
    | MessageEnd
)


@dataclass(frozen=True)
class ParsedToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class ParsedCompletion:
    """A whole completion folded from its events (what a non-streaming response returns)."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ParsedToolCall] = field(default_factory=list)
    builtin_tool_calls: list[BuiltinToolCall] = field(default_factory=list)
    finish_reason: StopReason | None = None
    reasoning_tokens: int = 0

    def apply(self, event: HarmonyEvent) -> None:
        if isinstance(event, ReasoningDelta):
            self.reasoning += event.text
        elif isinstance(event, ContentDelta):
            self.content += event.text
        elif isinstance(event, ToolCallStart):
            self.tool_calls.append(ParsedToolCall(event.id, event.name, ""))
        elif isinstance(event, ToolCallArgumentsDelta):
            call = self.tool_calls[event.index]
            self.tool_calls[event.index] = ParsedToolCall(
                call.id, call.name, call.arguments + event.text
            )
        elif isinstance(event, BuiltinToolCall):
            self.builtin_tool_calls.append(event)
        elif isinstance(event, MessageEnd) and event.stop_reason is not None:
            self.finish_reason = event.stop_reason


def coalesce(events: list[HarmonyEvent]) -> list[HarmonyEvent]:
    """Merge neighbouring deltas of the same kind (and channel / call), keeping order."""
    merged: list[HarmonyEvent] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, ReasoningDelta) and isinstance(last, ReasoningDelta):
            merged[-1] = ReasoningDelta(last.text + event.text)
        elif (
            isinstance(event, ContentDelta)
            and isinstance(last, ContentDelta)
            and last.channel == event.channel
        ):
            merged[-1] = ContentDelta(last.text + event.text, event.channel)
        elif (
            isinstance(event, ToolCallArgumentsDelta)
            and isinstance(last, ToolCallArgumentsDelta)
            and last.index == event.index
        ):
            merged[-1] = ToolCallArgumentsDelta(event.index, last.text + event.text)
        else:
            merged.append(event)
    return merged
