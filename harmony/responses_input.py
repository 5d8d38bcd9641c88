"""An OpenAI Responses request body -> a harmony `Conversation`.

`instructions` and system/developer input messages become developer instructions;
`reasoning` items the analysis channel; `function_call` items commentary calls to
`functions.NAME`; `function_call_output` items tool messages authored by the function
their `call_id` names. An assistant message directly followed by a function call (or
marked `phase: "commentary"`) is a preamble and goes to commentary, otherwise to final.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
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

_MESSAGE_PARTS = ("input_text", "output_text", "text")
_REASONING_PARTS = ("reasoning_text", "text")
_SUMMARY_PARTS = ("summary_text",)


class _Items:
    """Walks the input items, collecting instructions, messages and call ids."""

    def __init__(self) -> None:
        self.instructions: list[str] = []
        self.messages: list[HarmonyMessage] = []
        self.call_names: dict[str, str] = {}

    def add(self, item: Mapping[str, Any], field: str, next_type: str | None) -> None:
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            self.add_message(item, field, next_type)
        elif kind == "reasoning":
            self.add_reasoning(item, field)
        elif kind == "function_call":
            call_id = required_str(item.get("call_id"), f"{field}.call_id")
            name = function_name(item.get("name"), f"{field}.name")
            arguments = required_str(item.get("arguments"), f"{field}.arguments")
            self.call_names[call_id] = name
            self.messages.append(function_call_message(name, arguments))
        elif kind == "function_call_output":
            call_id = required_str(item.get("call_id"), f"{field}.call_id")
            if call_id not in self.call_names:
                raise HarmonyRequestError(
                    f"{field}.call_id", f"no earlier function_call item has call_id {call_id!r}"
                )
            output = content_text(item.get("output"), f"{field}.output", _MESSAGE_PARTS)
            self.messages.append(function_output_message(self.call_names[call_id], output or ""))
        else:
            raise HarmonyRequestError(
                f"{field}.type",
                f"unsupported input item type {kind!r}; use message, reasoning, function_call "
                "or function_call_output",
            )

    def add_message(self, item: Mapping[str, Any], field: str, next_type: str | None) -> None:
        role = item.get("role")
        text = content_text(item.get("content"), f"{field}.content", _MESSAGE_PARTS) or ""
        if role in ("system", "developer"):
            if text:
                self.instructions.append(text)
        elif role == "user":
            self.messages.append(HarmonyMessage(author="user", text=text))
        elif role == "assistant":
            preamble = item.get("phase") == "commentary" or next_type == "function_call"
            self.messages.append(assistant_message(text, "commentary" if preamble else "final"))
        else:
            raise HarmonyRequestError(
                f"{field}.role",
                f"unknown role {role!r}; expected one of system, developer, user, assistant",
            )

    def add_reasoning(self, item: Mapping[str, Any], field: str) -> None:
        content = item.get("content")
        if content:
            text = content_text(content, f"{field}.content", _REASONING_PARTS)
        else:
            text = content_text(item.get("summary") or [], f"{field}.summary", _SUMMARY_PARTS)
        if text:
            self.messages.append(assistant_message(text, "analysis"))


def conversation_from_responses(
    body: Any, *, date: str | None, builtin_tools: Collection[str], model_identity: str
) -> Conversation:
    request = as_mapping(body, "body")
    items = _Items()
    instructions = optional_str(request.get("instructions"), "instructions")
    if instructions:
        items.instructions.append(instructions)
    raw_input = request.get("input")
    if isinstance(raw_input, str):
        items.messages.append(HarmonyMessage(author="user", text=raw_input))
    else:
        entries = [as_mapping(e, f"input[{i}]") for i, e in enumerate(as_list(raw_input, "input"))]
        for index, entry in enumerate(entries):
            following = entries[index + 1] if index + 1 < len(entries) else {}
            items.add(entry, f"input[{index}]", following.get("type"))
    reasoning = request.get("reasoning")
    effort = None if reasoning is None else as_mapping(reasoning, "reasoning").get("effort")
    return assemble_conversation(
        instructions=items.instructions,
        messages=items.messages,
        functions=function_tools(request.get("tools"), request.get("tool_choice"), nested=False),
        response_formats=_responses_format(request.get("text")),
        effort=reasoning_effort(effort, "reasoning.effort"),
        date=date,
        builtin_tools=builtin_tools,
        model_identity=model_identity,
    )


def _responses_format(raw_text: Any) -> tuple[ResponseFormat, ...]:
    if raw_text is None:
        return ()
    raw_format = as_mapping(raw_text, "text").get("format")
    if raw_format is None:
        return ()
    fmt = as_mapping(raw_format, "text.format")
    parsed = response_format(
        fmt.get("type"), fmt.get("name"), fmt.get("description"), fmt.get("schema"), "text.format"
    )
    return () if parsed is None else (parsed,)
