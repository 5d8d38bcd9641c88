"""Responses output items and streaming events of server-side tool calls, in the shapes
and order of OpenAI's API (and of the `openai` package's models): `web_search_call`,
`code_interpreter_call`, `mcp_call`, and `mcp_list_tools` for each MCP server's listing.

Each call is one item: `response.output_item.added` when the model has called it, the
tool's own progress events while it runs, `response.output_item.done` with the result.
Events here carry `item_id` and `output_index`; the caller numbers and sends them.
"""

from __future__ import annotations

import json
from typing import Any

from oss_serve.harmony import BuiltinToolCall
from oss_serve.harmony.server_tools import MCP
from oss_serve.router.http.openai_json import new_id
from oss_serve.router.tool_loop import ToolCallFinished, ToolCallStarted
from oss_serve.router.tool_set import McpListing

Item = dict[str, Any]
Event = dict[str, Any]

_PREFIX = {"browser": "ws_", "python": "ci_", MCP: "mcp_"}


def call_item(started: ToolCallStarted | ToolCallFinished, session: str) -> Item | None:
    """The item of a call as the model wrote it (None for a recipient with no tool)."""
    call = started.call
    item_id = new_id(_PREFIX.get(started.kind, "tc_"))
    if started.kind == "browser":
        return {
            "type": "web_search_call",
            "id": item_id,
            "status": "in_progress",
            "action": _browser_action(call),
        }
    if started.kind == "python":
        return {
            "type": "code_interpreter_call",
            "id": item_id,
            "status": "in_progress",
            "code": call.arguments,
            "container_id": session,
            "outputs": None,
        }
    if started.kind == MCP:
        label, _, name = call.recipient.partition(".")
        return {
            "type": "mcp_call",
            "id": item_id,
            "status": "in_progress",
            "server_label": label,
            "name": name,
            "arguments": call.arguments,
            "output": None,
            "error": None,
        }
    return None


def started_events(item: Item) -> list[Event]:
    """After `output_item.added`: the call's progress up to the tool running."""
    kind = item["type"]
    if kind == "web_search_call":
        return [
            _event("response.web_search_call.in_progress"),
            _event("response.web_search_call.searching"),
        ]
    if kind == "code_interpreter_call":
        return [
            _event("response.code_interpreter_call.in_progress"),
            _event("response.code_interpreter_call_code.delta", delta=item["code"]),
            _event("response.code_interpreter_call_code.done", code=item["code"]),
            _event("response.code_interpreter_call.interpreting"),
        ]
    return [
        _event("response.mcp_call.in_progress"),
        _event("response.mcp_call_arguments.delta", delta=item["arguments"]),
        _event("response.mcp_call_arguments.done", arguments=item["arguments"]),
    ]


def finish_item(item: Item, finished: ToolCallFinished) -> list[Event]:
    """Fill the item with the tool's result; the events before `output_item.done`."""
    output = finished.output
    details = output.details
    item["status"] = "failed" if output.error else "completed"
    kind = item["type"]
    if kind == "web_search_call":
        action = details.get("action")
        if isinstance(action, dict):
            item["action"] = _web_action(action, item["action"])
        sources = details.get("sources")
        if isinstance(sources, list) and item["action"].get("type") == "search":
            item["action"].setdefault("sources", sources)
        return [_event("response.web_search_call.completed")]
    if kind == "code_interpreter_call":
        outputs = details.get("outputs")
        item["outputs"] = (
            outputs if isinstance(outputs, list) else [{"type": "logs", "logs": output.text}]
        )
        return [_event("response.code_interpreter_call.completed")]
    if output.error:
        item["error"] = {
            "type": "mcp_tool_execution_error",
            "content": [{"type": "text", "text": output.text}],
        }
        return [_event("response.mcp_call.failed")]
    item["output"] = output.text
    return [_event("response.mcp_call.completed")]


def list_tools_item(listing: McpListing) -> Item:
    return {
        "type": "mcp_list_tools",
        "id": new_id("mcpl_"),
        "server_label": listing.server_label,
        "tools": [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.input_schema,
                "annotations": None,
            }
            for tool in listing.tools
        ],
        "error": None,
    }


def list_tools_events() -> tuple[list[Event], list[Event]]:
    """(after `added`, before `done`) of an MCP server's listing."""
    return [_event("response.mcp_list_tools.in_progress")], [
        _event("response.mcp_list_tools.completed")
    ]


def in_progress_copy(item: Item) -> Item:
    """The item as `output_item.added` shows it: running, with no result yet."""
    copy = dict(item, status="in_progress")
    if item["type"] == "mcp_list_tools":
        copy["tools"] = []
    if item["type"] == "mcp_call":
        copy["arguments"] = ""
    return copy


def _event(kind: str, **fields: Any) -> Event:
    return {"type": kind, **fields}


def _web_action(action: dict[str, Any], requested: dict[str, Any]) -> dict[str, Any]:
    """The tool's account of what it did, in the API's action shapes (`requested`, read
    from the model's arguments, where the tool's is not one of them)."""
    told = str(action.get("type"))
    kind = {"open": "open_page", "find": "find_in_page"}.get(told, told)
    if kind == "search":
        query = action.get("query")
        return {"type": "search", "query": query if isinstance(query, str) else ""}
    url = action.get("url")
    if kind == "open_page":
        return {"type": "open_page", "url": url if isinstance(url, str) else None}
    if kind == "find_in_page":
        pattern = action.get("pattern")
        return {
            "type": "find_in_page",
            "pattern": pattern if isinstance(pattern, str) else "",
            "url": url if isinstance(url, str) else "",
        }
    return requested


def _browser_action(call: BuiltinToolCall) -> dict[str, Any]:
    """The `action` of a web_search_call from the model's arguments (the tool may refine it)."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {}
    function = call.recipient.partition(".")[2]
    if function == "open":
        target = arguments.get("id")
        return {"type": "open_page", "url": target if isinstance(target, str) else None}
    if function == "find":
        return {"type": "find_in_page", "pattern": str(arguments.get("pattern", "")), "url": ""}
    query = arguments.get("query")
    return {"type": "search", "query": query if isinstance(query, str) else ""}
