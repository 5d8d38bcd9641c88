"""Render a request to o200k_harmony token ids, ending with the generation prompt.

Each header piece (role, ` to=...`, channel, content type) and each text is encoded on its
own, exactly as openai-harmony does: byte-pair merges do not cross piece boundaries, so
encoding the joined string would give different ids than the model was trained on.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from oss_serve.common.vocab import CALL, CHANNEL, CONSTRAIN, END, MESSAGE, START, o200k_harmony
from oss_serve.harmony.chat_input import conversation_from_chat
from oss_serve.harmony.conversation import (
    DEFAULT_MODEL_IDENTITY,
    FUNCTIONS_NAMESPACE,
    VALID_CHANNELS,
    Conversation,
    DeveloperSpec,
    HarmonyMessage,
    SystemSpec,
)
from oss_serve.harmony.responses_input import conversation_from_responses
from oss_serve.harmony.tool_schema import (
    ToolNamespace,
    json_compact,
    render_tools_section,
    rust_lines,
)

_CONSTRAIN_MARKER = "<|constrain|>"
_SHORT_TEXT_CHARS = 64


def system_text(spec: SystemSpec, *, has_function_tools: bool) -> str:
    """The system message body: identity and dates, reasoning effort, built-in tools, channels."""
    sections = [
        "\n".join(
            [
                spec.model_identity,
                f"Knowledge cutoff: {spec.knowledge_cutoff}",
                f"Current date: {spec.date}",
            ]
        ),
        f"Reasoning: {spec.reasoning_effort}",
    ]
    if spec.builtin_namespaces:
        sections.append(render_tools_section(spec.builtin_namespaces))
    channels = (
        f"# Valid channels: {', '.join(VALID_CHANNELS)}. "
        "Channel must be included for every message."
    )
    if has_function_tools:
        channels += (
            f"\nCalls to these tools must go to the commentary channel: '{FUNCTIONS_NAMESPACE}'."
        )
    sections.append(channels)
    return "\n\n".join(sections)


def developer_text(spec: DeveloperSpec) -> str:
    """The developer message body: `# Instructions`, `# Tools`, `# Response Formats`."""
    sections = []
    if spec.instructions:
        sections += ["# Instructions", spec.instructions]
    namespaces = list(spec.namespaces)
    if spec.functions:
        namespaces.append(
            ToolNamespace(name=FUNCTIONS_NAMESPACE, description=None, tools=spec.functions)
        )
    if namespaces:
        sections.append(render_tools_section(namespaces))
    if spec.response_formats:
        formats = ["# Response Formats"]
        for fmt in spec.response_formats:
            comment = "".join(f"// {line}\n" for line in rust_lines(fmt.description or ""))
            formats.append(f"## {fmt.name}\n\n{comment}{json_compact(fmt.schema)}")
        sections.append("\n\n".join(formats))
    return "\n\n".join(sections)


def drop_finished_reasoning(messages: Sequence[HarmonyMessage]) -> list[HarmonyMessage]:
    """Remove the analysis messages of every turn that reached a final answer: the chain of
    thought and the built-in tool calls and results on its channel, as openai-harmony drops
    them.

    A turn runs from a user message to the next; analysis inside a turn still waiting on a
    tool result (no final yet) is kept, because the model continues that chain of thought.
    """
    kept: list[HarmonyMessage] = []
    turn_has_final = False
    for message in reversed(messages):
        if message.author == "user":
            turn_has_final = False
        elif message.is_final:
            turn_has_final = True
        elif message.channel == "analysis" and turn_has_final:
            continue
        kept.append(message)
    kept.reverse()
    return kept


@functools.lru_cache(maxsize=4096)
def _encode_cached(text: str) -> tuple[int, ...]:
    """Header pieces (roles, recipients, channels) repeat in every request: encode them once."""
    return tuple(o200k_harmony().encode_ordinary(text))


@functools.lru_cache(maxsize=64)
def _encode_preamble(text: str) -> tuple[int, ...]:
    """System and developer texts (tool schemas can be long) repeat across a client's requests."""
    return tuple(o200k_harmony().encode_ordinary(text))


def _encode(text: str) -> Iterable[int]:
    if len(text) <= _SHORT_TEXT_CHARS:
        return _encode_cached(text)
    return o200k_harmony().encode_ordinary(text)


def _render_message(message: HarmonyMessage, out: list[int], *, cache_text: bool = False) -> None:
    out.append(START)
    out.extend(_encode_cached(message.author))
    if message.recipient is not None and message.recipient != "all":
        out.extend(_encode_cached(f" to={message.recipient}"))
    if message.channel is not None:
        out.append(CHANNEL)
        out.extend(_encode_cached(message.channel))
    if message.content_type is not None:
        if message.content_type.startswith(_CONSTRAIN_MARKER):
            out.extend(_encode_cached(" "))
            out.append(CONSTRAIN)
            rest = message.content_type[len(_CONSTRAIN_MARKER) :]
            if rest:
                out.extend(_encode_cached(rest))
        else:
            out.extend(_encode_cached(f" {message.content_type}"))
    out.append(MESSAGE)
    out.extend(_encode_preamble(message.text) if cache_text else _encode(message.text))
    out.append(CALL if message.author == "assistant" and message.recipient is not None else END)


def render_messages(messages: Iterable[HarmonyMessage]) -> list[int]:
    """Token ids of messages as they are, with no chain-of-thought dropping."""
    out: list[int] = []
    for message in messages:
        _render_message(message, out)
    return out


def continue_after_tool(
    prompt: Sequence[int], completion: Sequence[int], result: HarmonyMessage
) -> list[int]:
    """The next prompt of a server-side tool loop: the prompt, the model's tokens up to and
    with its `<|call|>` (added if the engine left it out), the tool's message, and
    `<|start|>assistant`. The model's own tokens are kept as generated, so the replica's
    prefix cache holds the whole new prompt but the tool's message."""
    out = [*prompt, *completion]
    if not completion or completion[-1] != CALL:
        out.append(CALL)
    _render_message(result, out)
    out.append(START)
    out.extend(_encode_cached("assistant"))
    return out


def render_conversation(conversation: Conversation) -> list[int]:
    """System, developer (if not empty), the messages after CoT dropping, `<|start|>assistant`."""
    out: list[int] = []
    has_functions = bool(conversation.developer.functions)
    system = system_text(conversation.system, has_function_tools=has_functions)
    _render_message(HarmonyMessage(author="system", text=system), out, cache_text=True)
    if not conversation.developer.is_empty:
        developer = developer_text(conversation.developer)
        _render_message(HarmonyMessage(author="developer", text=developer), out, cache_text=True)
    for message in drop_finished_reasoning(conversation.messages):
        _render_message(message, out)
    out.append(START)
    out.extend(_encode_cached("assistant"))
    return out


def render_chat_request(
    body: Any,
    *,
    date: str | None = None,
    builtin_tools: Collection[str] = (),
    model_identity: str = DEFAULT_MODEL_IDENTITY,
    tool_namespaces: Sequence[ToolNamespace] = (),
) -> list[int]:
    """Token ids for a Chat Completions request, ending with `<|start|>assistant`.

    `date` (YYYY-MM-DD, default today in UTC) goes into the system message;
    `builtin_tools` ("browser", "python") are the built-in tools the system message declares,
    `tool_namespaces` the developer message's namespaces besides `functions` (MCP servers').
    Raises HarmonyRequestError (a ValueError) naming the offending field.
    """
    conversation = conversation_from_chat(
        body,
        date=date,
        builtin_tools=builtin_tools,
        model_identity=model_identity,
        tool_namespaces=tool_namespaces,
    )
    return render_conversation(conversation)


def render_responses_request(
    body: Any,
    *,
    date: str | None = None,
    builtin_tools: Collection[str] = (),
    model_identity: str = DEFAULT_MODEL_IDENTITY,
    tool_namespaces: Sequence[ToolNamespace] = (),
) -> list[int]:
    """Token ids for a Responses API request (input items, instructions, tools, reasoning)."""
    conversation = conversation_from_responses(
        body,
        date=date,
        builtin_tools=builtin_tools,
        model_identity=model_identity,
        tool_namespaces=tool_namespaces,
    )
    return render_conversation(conversation)
