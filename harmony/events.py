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


class CompletionFold:
    """Folds events into a ParsedCompletion in linear time (text kept as lists of pieces)."""

    def __init__(self) -> None:
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.calls: list[tuple[str, str, list[str]]] = []
        self.builtin_calls: list[BuiltinToolCall] = []
        self.finish_reason: StopReason | None = None

    def apply(self, event: HarmonyEvent) -> None:
        if isinstance(event, ReasoningDelta):
            self.reasoning.append(event.text)
        elif isinstance(event, ContentDelta):
            self.content.append(event.text)
        elif isinstance(event, ToolCallStart):
            self.calls.append((event.id, event.name, []))
        elif isinstance(event, ToolCallArgumentsDelta):
            self.calls[event.index][2].append(event.text)
        elif isinstance(event, BuiltinToolCall):
            self.builtin_calls.append(event)
        elif isinstance(event, MessageEnd) and event.stop_reason is not None:
            self.finish_reason = event.stop_reason

    def completion(self, *, reasoning_tokens: int) -> ParsedCompletion:
        return ParsedCompletion(
            reasoning="".join(self.reasoning),
            content="".join(self.content),
            tool_calls=[ParsedToolCall(i, name, "".join(args)) for i, name, args in self.calls],
            builtin_tool_calls=list(self.builtin_calls),
            finish_reason=self.finish_reason,
            reasoning_tokens=reasoning_tokens,
        )


def _delta_key(event: HarmonyEvent) -> tuple[str, object] | None:
    """Which deltas may merge: same kind and same channel (content) or call (arguments)."""
    if isinstance(event, ReasoningDelta):
        return ("reasoning", None)
    if isinstance(event, ContentDelta):
        return ("content", event.channel)
    if isinstance(event, ToolCallArgumentsDelta):
        return ("arguments", event.index)
    return None


def _merged(first: HarmonyEvent, texts: list[str]) -> HarmonyEvent:
    text = "".join(texts)
    if isinstance(first, ContentDelta):
        return ContentDelta(text, first.channel)
    if isinstance(first, ToolCallArgumentsDelta):
        return ToolCallArgumentsDelta(first.index, text)
    return ReasoningDelta(text)


def coalesce(events: list[HarmonyEvent]) -> list[HarmonyEvent]:
    """Merge neighbouring deltas of the same kind (and channel / call), keeping order."""
    merged: list[HarmonyEvent] = []
    run: list[HarmonyEvent] = []
    for event in [*events, None]:
        key = None if event is None else _delta_key(event)
        if run and (key is None or key != _delta_key(run[0])):
            merged.append(_merged(run[0], [e.text for e in run]))  # type: ignore[union-attr]
            run = []
        if key is not None and event is not None:
            run.append(event)
        elif event is not None:
            merged.append(event)
    return merged
