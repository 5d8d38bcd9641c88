"""An OpenAI Chat Completions request body -> a harmony `Conversation`.

Mapping: `system`/`developer` messages become the developer message's instructions (in
order); `user` text stays user; an assistant's `reasoning`/`reasoning_content` goes to the
analysis channel, its `content` to final, or, next to tool calls, to commentary (a
preamble: a final message would end the turn before the calls); each tool call is a
commentary message to `functions.NAME`; a `tool` message is authored by the function its
`tool_call_id` names.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from oss_serve.harmony.conversation import (
    Conversation,
    HarmonyMessage,
    ResponseFormat,
    assistant_message,
    function_call_message,
    function_output_message,
)
from oss_serve.harmony.errors import HarmonyRequestError
from oss_serve.harmony.request_fields import (
    as_list,
    as_mapping,
    assemble_conversation,
    content_text,
    function_name,
    function_tools,
    optional_str,
    reasoning_effort,
    required_str,
    response_format,
)
from oss_serve.harmony.tool_schema import ToolNamespace

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
_TEXT_PARTS = ("text",)


def conversation_from_chat(
    body: Any,
    *,
    date: str | None,
    builtin_tools: Collection[str],
    model_identity: str,
    tool_namespaces: Sequence[ToolNamespace] = (),
) -> Conversation:
    request = as_mapping(body, "body")
    functions = function_tools(request.get("tools"), request.get("tool_choice"), nested=True)
    raw_messages = as_list(request.get("messages"), "messages")
    if not raw_messages:
        raise HarmonyRequestError("messages", "must contain at least one message")
    instructions: list[str] = []
    messages: list[HarmonyMessage] = []
    call_names: dict[str, str] = {}
    for index, raw in enumerate(raw_messages):
        field = f"messages[{index}]"
        message = as_mapping(raw, field)
        role = message.get("role")
        if role in ("system", "developer"):
            text = content_text(message.get("content"), f"{field}.content", _TEXT_PARTS)
            if text:
                instructions.append(text)
        elif role == "user":
            text = content_text(message.get("content"), f"{field}.content", _TEXT_PARTS)
            messages.append(HarmonyMessage(author="user", text=text or ""))
        elif role == "assistant":
            messages.extend(_assistant_messages(message, field, call_names))
        elif role == "tool":
            messages.append(_tool_message(message, field, call_names))
        else:
            raise HarmonyRequestError(
                f"{field}.role", f"unknown role {role!r}; expected one of {', '.join(CHAT_ROLES)}"
            )
    return assemble_conversation(
        instructions=instructions,
        messages=messages,
        functions=functions,
        response_formats=_chat_response_format(request.get("response_format")),
        effort=reasoning_effort(request.get("reasoning_effort"), "reasoning_effort"),
        date=date,
        builtin_tools=builtin_tools,
        model_identity=model_identity,
        tool_namespaces=tool_namespaces,
    )


def _assistant_messages(
    message: Mapping[str, Any], field: str, call_names: dict[str, str]
) -> list[HarmonyMessage]:
    reasoning = optional_str(message.get("reasoning"), f"{field}.reasoning")
    if reasoning is None:
        reasoning = optional_str(message.get("reasoning_content"), f"{field}.reasoning_content")
    content = content_text(message.get("content"), f"{field}.content", _TEXT_PARTS, allow_none=True)
    raw_calls = message.get("tool_calls")
    calls = [] if raw_calls is None else as_list(raw_calls, f"{field}.tool_calls")
    out = []
    if reasoning:
        out.append(assistant_message(reasoning, "analysis"))
    if calls:
        if content:
            out.append(assistant_message(content, "commentary"))
        for index, raw_call in enumerate(calls):
            out.append(_tool_call(raw_call, f"{field}.tool_calls[{index}]", call_names))
    elif content is not None:
        out.append(assistant_message(content, "final"))
    return out


def _tool_call(raw_call: Any, field: str, call_names: dict[str, str]) -> HarmonyMessage:
    call = as_mapping(raw_call, field)
    if call.get("type", "function") != "function":
        raise HarmonyRequestError(f"{field}.type", f"must be 'function', got {call.get('type')!r}")
    call_id = required_str(call.get("id"), f"{field}.id")
    function = as_mapping(call.get("function"), f"{field}.function")
    name = function_name(function.get("name"), f"{field}.function.name")
    arguments = required_str(function.get("arguments"), f"{field}.function.arguments")
    call_names[call_id] = name
    return function_call_message(name, arguments)


def _tool_message(
    message: Mapping[str, Any], field: str, call_names: Mapping[str, str]
) -> HarmonyMessage:
    call_id = required_str(message.get("tool_call_id"), f"{field}.tool_call_id")
    if call_id not in call_names:
        raise HarmonyRequestError(
            f"{field}.tool_call_id",
            f"no earlier assistant message has a tool call with id {call_id!r}",
        )
    output = content_text(message.get("content"), f"{field}.content", _TEXT_PARTS)
    return function_output_message(call_names[call_id], output or "")


def _chat_response_format(raw: Any) -> tuple[ResponseFormat, ...]:
    if raw is None:
        return ()
    fmt = as_mapping(raw, "response_format")
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = as_mapping(fmt.get("json_schema"), "response_format.json_schema")
        parsed = response_format(
            kind,
            spec.get("name"),
            spec.get("description"),
            spec.get("schema"),
            "response_format.json_schema",
        )
    else:
        parsed = response_format(kind, None, None, None, "response_format")
    return () if parsed is None else (parsed,)
