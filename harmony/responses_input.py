"""An OpenAI Responses request body -> a harmony `Conversation`.

`instructions` and system/developer input messages become developer instructions;
`reasoning` items the analysis channel; `function_call` items commentary calls to
`functions.NAME`; `function_call_output` items tool messages authored by the function
their `call_id` names. An assistant message directly followed by a function call (or
marked `phase: "commentary"`) is a preamble and goes to commentary, otherwise to final.
The server-side calls of an earlier response come back as the call and its result:
`code_interpreter_call` as python's (analysis channel), `mcp_call` as the MCP tool's
(commentary); `web_search_call` and `mcp_list_tools` items are records only (the pages
and the tool list are not in them) and render nothing.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from oss_serve.harmony.builtin_tools import PYTHON
from oss_serve.harmony.conversation import (
    CONSTRAIN_JSON,
    Conversation,
    HarmonyMessage,
    ResponseFormat,
    assistant_message,
    function_call_message,
    function_output_message,
    tool_call_message,
    tool_output_message,
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
from oss_serve.harmony.server_tools import HOSTED_TOOL_TYPES
from oss_serve.harmony.tool_schema import ToolNamespace

_MESSAGE_PARTS = ("input_text", "output_text", "text")
_REASONING_PARTS = ("reasoning_text", "text")
_SUMMARY_PARTS = ("summary_text",)
_RECORD_ONLY_ITEMS = ("web_search_call", "mcp_list_tools")


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
        elif kind == "code_interpreter_call":
            self.add_code_interpreter_call(item, field)
        elif kind == "mcp_call":
            self.add_mcp_call(item, field)
        elif kind not in _RECORD_ONLY_ITEMS:
            raise HarmonyRequestError(
                f"{field}.type",
                f"unsupported input item type {kind!r}; use message, reasoning, function_call, "
                "function_call_output, or an earlier response's output items",
            )

    def add_code_interpreter_call(self, item: Mapping[str, Any], field: str) -> None:
        code = optional_str(item.get("code"), f"{field}.code") or ""
        logs = []
        for index, raw in enumerate(as_list(item.get("outputs") or [], f"{field}.outputs")):
            output = as_mapping(raw, f"{field}.outputs[{index}]")
            if output.get("type") == "logs":
                logs.append(required_str(output.get("logs"), f"{field}.outputs[{index}].logs"))
        self.messages.append(tool_call_message(PYTHON, code, "analysis", "code"))
        self.messages.append(tool_output_message(PYTHON, "".join(logs), "analysis"))

    def add_mcp_call(self, item: Mapping[str, Any], field: str) -> None:
        label = required_str(item.get("server_label"), f"{field}.server_label")
        name = required_str(item.get("name"), f"{field}.name")
        arguments = required_str(item.get("arguments"), f"{field}.arguments")
        output = optional_str(item.get("output"), f"{field}.output")
        if output is None:
            output = _error_text(item.get("error"))
        recipient = f"{label}.{name}"
        self.messages.append(tool_call_message(recipient, arguments, "commentary", CONSTRAIN_JSON))
        self.messages.append(tool_output_message(recipient, output, "commentary"))

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
    body: Any,
    *,
    date: str | None,
    builtin_tools: Collection[str],
    model_identity: str,
    tool_namespaces: Sequence[ToolNamespace] = (),
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
        functions=function_tools(
            request.get("tools"),
            request.get("tool_choice"),
            nested=False,
            skip_types=HOSTED_TOOL_TYPES,
        ),
        response_formats=_responses_format(request.get("text")),
        effort=reasoning_effort(effort, "reasoning.effort"),
        date=date,
        builtin_tools=builtin_tools,
        model_identity=model_identity,
        tool_namespaces=tool_namespaces,
    )


def _error_text(error: Any) -> str:
    """An MCP call's error as the model read it: a message, or the error object as JSON."""
    if isinstance(error, str):
        return error
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return str(error["message"])
    return "" if error is None else json.dumps(error, ensure_ascii=False)


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
