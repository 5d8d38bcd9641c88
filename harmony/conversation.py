"""A request as harmony sees it: one system part, one developer part, then messages.

The Chat Completions and Responses adapters both build a `Conversation`; the renderer
only knows this shape, so both APIs render (and drop chain-of-thought) the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from oss_serve.harmony.tool_schema import ToolNamespace, ToolSpec

ReasoningEffort = Literal["low", "medium", "high"]

DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
VALID_CHANNELS = ("analysis", "commentary", "final")
FUNCTIONS_NAMESPACE = "functions"
CONSTRAIN_JSON = "<|constrain|>json"


@dataclass(frozen=True)
class ResponseFormat:
    """A `## name` entry of the developer message's `# Response Formats` section."""

    name: str
    description: str | None
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class SystemSpec:
    """What the harmony system message says: identity, dates, effort, built-in tools."""

    date: str
    reasoning_effort: ReasoningEffort = "medium"
    model_identity: str = DEFAULT_MODEL_IDENTITY
    knowledge_cutoff: str = KNOWLEDGE_CUTOFF
    builtin_namespaces: tuple[ToolNamespace, ...] = ()


@dataclass(frozen=True)
class DeveloperSpec:
    """What the harmony developer message says: instructions, function tools, other tool
    namespaces (MCP servers'), formats."""

    instructions: str | None = None
    functions: tuple[ToolSpec, ...] = ()
    response_formats: tuple[ResponseFormat, ...] = ()
    namespaces: tuple[ToolNamespace, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.instructions or self.functions or self.response_formats or self.namespaces)


@dataclass(frozen=True)
class HarmonyMessage:
    """One rendered message after the system/developer ones.

    `author` is the role (`user`, `assistant`) or, for tool output, the tool's name
    (`functions.get_weather`); `content_type` is e.g. `<|constrain|>json`.
    """

    author: str
    text: str
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None

    @property
    def is_analysis(self) -> bool:
        return self.author == "assistant" and self.channel == "analysis"

    @property
    def is_final(self) -> bool:
        return self.author == "assistant" and self.channel == "final"


def assistant_message(text: str, channel: str) -> HarmonyMessage:
    return HarmonyMessage(author="assistant", text=text, channel=channel)


def function_call_message(name: str, arguments: str) -> HarmonyMessage:
    """An assistant call to `functions.NAME` with JSON arguments (ends with `<|call|>`)."""
    return HarmonyMessage(
        author="assistant",
        text=arguments,
        channel="commentary",
        recipient=f"{FUNCTIONS_NAMESPACE}.{name}",
        content_type=CONSTRAIN_JSON,
    )


def tool_call_message(
    recipient: str, arguments: str, channel: str, content_type: str
) -> HarmonyMessage:
    """An assistant call to a server-side tool (`python`, `browser.search`, `<label>.<tool>`)."""
    return HarmonyMessage(
        author="assistant",
        text=arguments,
        channel=channel,
        recipient=recipient,
        content_type=content_type,
    )


def tool_output_message(author: str, output: str, channel: str) -> HarmonyMessage:
    """A server-side tool's result, authored by the tool, on the channel of its call."""
    return HarmonyMessage(author=author, text=output, channel=channel, recipient="assistant")


def function_output_message(name: str, output: str) -> HarmonyMessage:
    """A function's result, authored by `functions.NAME` and addressed to the assistant."""
    return HarmonyMessage(
        author=f"{FUNCTIONS_NAMESPACE}.{name}",
        text=output,
        channel="commentary",
        recipient="assistant",
    )


@dataclass(frozen=True)
class Conversation:
    system: SystemSpec
    developer: DeveloperSpec
    messages: tuple[HarmonyMessage, ...]
