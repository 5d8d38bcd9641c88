"""openai-harmony as the oracle: the same Chat Completions conversation built with its types.

This mapping is written independently of oss_serve's adapters (from the harmony format's rules), so
a disagreement shows up as a failing comparison rather than being shared by both sides.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyEncodingName,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    RenderOptions,
    Role,
    SystemContent,
    ToolDescription,
    ToolNamespaceConfig,
    load_harmony_encoding,
)

from oss_serve.common.vocab import MESSAGE, use_vocab_dir

_EFFORTS = {
    None: ReasoningEffort.MEDIUM,
    "low": ReasoningEffort.LOW,
    "medium": ReasoningEffort.MEDIUM,
    "high": ReasoningEffort.HIGH,
}


@functools.cache
def encoding() -> HarmonyEncoding:
    use_vocab_dir()
    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


@dataclass
class OracleRequest:
    """What the oracle renders: system/developer contents and the message list."""

    system: SystemContent
    developer: DeveloperContent | None
    response_formats: list[dict[str, Any]]
    messages: list[Message]

    @property
    def has_function_tools(self) -> bool:
        tools = self.developer.tools if self.developer else None
        return bool(tools and tools.get("functions") and tools["functions"].tools)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content)


def oracle_request(
    body: dict[str, Any],
    *,
    date: str,
    builtin_tools: tuple[str, ...] = (),
    parameters_for_oracle: Any = None,
) -> OracleRequest:
    """`parameters_for_oracle(params)` may replace a tool's schema (for library-bug cases)."""
    system = SystemContent.new().with_conversation_start_date(date)
    system = system.with_reasoning_effort(_EFFORTS[body.get("reasoning_effort")])
    if "browser" in builtin_tools:
        system = system.with_browser_tool()
    if "python" in builtin_tools:
        system = system.with_python_tool()
    instructions = []
    messages: list[Message] = []
    call_names: dict[str, str] = {}
    for raw in body["messages"]:
        role = raw["role"]
        if role in ("system", "developer"):
            if _text(raw["content"]):
                instructions.append(_text(raw["content"]))
        elif role == "user":
            messages.append(Message.from_role_and_content(Role.USER, _text(raw["content"])))
        elif role == "assistant":
            messages.extend(_assistant(raw, call_names))
        elif role == "tool":
            name = call_names[raw["tool_call_id"]]
            messages.append(
                Message.from_author_and_content(
                    Author.new(Role.TOOL, f"functions.{name}"), _text(raw["content"])
                )
                .with_channel("commentary")
                .with_recipient("assistant")
            )
    developer = DeveloperContent.new()
    if instructions:
        developer = developer.with_instructions("\n\n".join(instructions))
    tools = body.get("tools") or []
    if tools and body.get("tool_choice") != "none":
        descriptions = []
        for tool in tools:
            function = tool["function"]
            params = function.get("parameters")
            if params is not None and parameters_for_oracle is not None:
                params = parameters_for_oracle(params)
            descriptions.append(
                ToolDescription.new(function["name"], function.get("description") or "", params)
            )
        developer = developer.with_function_tools(descriptions)
    formats = _response_formats(body.get("response_format"))
    has_developer = bool(instructions or developer.tools or formats)
    return OracleRequest(system, developer if has_developer else None, formats, messages)


def _assistant(raw: dict[str, Any], call_names: dict[str, str]) -> list[Message]:
    out = []
    reasoning = raw.get("reasoning") or raw.get("reasoning_content")
    content = raw.get("content")
    if reasoning:
        out.append(
            Message.from_role_and_content(Role.ASSISTANT, reasoning).with_channel("analysis")
        )
    calls = raw.get("tool_calls") or []
    if calls and content:
        out.append(
            Message.from_role_and_content(Role.ASSISTANT, _text(content)).with_channel("commentary")
        )
    for call in calls:
        call_names[call["id"]] = call["function"]["name"]
        out.append(
            Message.from_role_and_content(Role.ASSISTANT, call["function"]["arguments"])
            .with_channel("commentary")
            .with_recipient(f"functions.{call['function']['name']}")
            .with_content_type("<|constrain|>json")
        )
    if not calls and content is not None:
        out.append(
            Message.from_role_and_content(Role.ASSISTANT, _text(content)).with_channel("final")
        )
    return out


def _response_formats(raw: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not raw or raw["type"] == "text":
        return []
    if raw["type"] == "json_object":
        return [{"name": "json_object", "schema": {"type": "object"}}]
    spec = raw["json_schema"]
    return [
        {"name": spec["name"], "description": spec.get("description"), "schema": spec["schema"]}
    ]


def response_formats_text(formats: list[dict[str, Any]]) -> str:
    """The `# Response Formats` section as the gpt-oss docs lay it out (the library has none)."""
    parts = ["# Response Formats"]
    for fmt in formats:
        # every description line is a comment line (a raw newline would end the comment)
        lines = (fmt.get("description") or "").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        comment = "".join(f"// {line.removesuffix(chr(13))}\n" for line in lines)
        schema = json.dumps(fmt["schema"], separators=(",", ":"), ensure_ascii=False)
        parts.append(f"## {fmt['name']}\n\n{comment}{schema}")
    return "\n\n".join(parts)


def library_kept(messages: list[Message]) -> list[Message]:
    """The messages openai-harmony keeps with its default auto_drop_analysis."""
    last_final = next(
        (m.channel == "final" for m in reversed(messages) if m.author.role == Role.ASSISTANT),
        False,
    )
    first_final = next((i for i, m in enumerate(messages) if m.channel == "final"), None)
    if not last_final or first_final is None:
        return list(messages)
    return [m for i, m in enumerate(messages) if not (i < first_final and m.channel == "analysis")]


def turn_rule_kept(messages: list[Message]) -> list[Message]:
    """The turn rule: drop analysis of every user-delimited turn that has a final answer."""
    kept: list[Message] = []
    turn_has_final = False
    for message in reversed(messages):
        if message.author.role == Role.USER:
            turn_has_final = False
        elif message.channel == "final":
            turn_has_final = True
        elif message.channel == "analysis" and turn_has_final:
            continue
        kept.append(message)
    return kept[::-1]


def render(request: OracleRequest, *, drop: str = "library") -> list[int]:
    """Oracle tokens. drop="library": its own CoT dropping; "turn": the turn rule (`turn_rule_kept`) applied
    first and the library's dropping switched off (for the documented CoT divergence)."""
    enc = encoding()
    messages = request.messages
    config = None
    if drop == "turn":
        messages = turn_rule_kept(messages)
        config = RenderConversationConfig(auto_drop_analysis=False)
    system = Message.from_role_and_content(Role.SYSTEM, request.system)
    head = [system]
    if request.developer is not None and not request.response_formats:
        head.append(Message.from_role_and_content(Role.DEVELOPER, request.developer))
        convo = Conversation.from_messages([*head, *messages])
        return enc.render_conversation_for_completion(convo, Role.ASSISTANT, config)
    # The library has no response formats: render its developer text, append the section
    # the docs describe, and render that as the developer message's text.
    options = RenderOptions(conversation_has_function_tools=request.has_function_tools)
    tokens = enc.render(system, options)
    if request.developer is not None:
        dev_tokens = enc.render(Message.from_role_and_content(Role.DEVELOPER, request.developer))
        body_start = dev_tokens.index(MESSAGE) + 1  # after <|start|>developer<|message|>
        dev_text = enc.decode_utf8(dev_tokens[body_start:-1])
        formats = response_formats_text(request.response_formats)
        full = f"{dev_text}\n\n{formats}" if dev_text else formats
        tokens += enc.render(Message.from_role_and_content(Role.DEVELOPER, full))
    convo = Conversation.from_messages(messages)
    return tokens + enc.render_conversation_for_completion(convo, Role.ASSISTANT, config)


def builtin_namespaces() -> dict[str, ToolNamespaceConfig]:
    return {"browser": ToolNamespaceConfig.browser(), "python": ToolNamespaceConfig.python()}
