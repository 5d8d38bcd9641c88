"""OpenAI's documented order of the Responses streaming events, item by item: what the
tool-loop tests hold a stream to, whatever the model chose to do."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

_EVENT = TypeAdapter(ResponseStreamEvent)
R = "response."
# per output item type: the event types from `output_item.added` to `output_item.done`
ITEM_ORDER = {
    "reasoning": rf"{R}reasoning_text\.delta( {R}reasoning_text\.delta)* {R}reasoning_text\.done",
    "message": rf"{R}content_part\.added( {R}output_text\.delta)* {R}output_text\.done "
    rf"{R}content_part\.done",
    "function_call": rf"({R}function_call_arguments\.delta )*{R}function_call_arguments\.done",
    "web_search_call": rf"{R}web_search_call\.in_progress {R}web_search_call\.searching "
    rf"{R}web_search_call\.completed",
    "code_interpreter_call": rf"{R}code_interpreter_call\.in_progress"
    rf"( {R}code_interpreter_call_code\.delta)+ {R}code_interpreter_call_code\.done "
    rf"{R}code_interpreter_call\.interpreting {R}code_interpreter_call\.completed",
    "mcp_call": rf"{R}mcp_call\.in_progress( {R}mcp_call_arguments\.delta)+ "
    rf"{R}mcp_call_arguments\.done {R}mcp_call\.(completed|failed)",
    "mcp_list_tools": rf"{R}mcp_list_tools\.in_progress {R}mcp_list_tools\.(completed|failed)",
}


def parsed(events: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Every event as the official client's model (strict: an unknown field type fails)."""
    return [_EVENT.validate_python(dict(event)) for event in events]


def check_documented_order(events: list[Mapping[str, Any]]) -> list[str]:
    """Assert the stream's order; returns the output item types in order.

    created, in_progress, then for each item in turn: added, its own events, done (items
    follow one another: the next is added only after the previous is done), then a
    completed or incomplete event; sequence numbers count up from 0.
    """
    types = [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert types[:2] == ["response.created", "response.in_progress"], types[:3]
    assert types[-1] in ("response.completed", "response.incomplete"), types[-3:]
    item_types: list[str] = []
    position = 2
    while position < len(events) - 1:
        added = events[position]
        assert added["type"] == "response.output_item.added", types[position:]
        index = added["output_index"]
        assert index == len(item_types)
        kind = added["item"]["type"]
        end = types.index("response.output_item.done", position)
        inner = events[position + 1 : end]
        assert all(e["output_index"] == index for e in inner), inner
        assert all(e.get("item_id", added["item"]["id"]) == added["item"]["id"] for e in inner)
        joined = " ".join(e["type"] for e in inner)
        assert re.fullmatch(ITEM_ORDER[kind], joined), (kind, joined)
        assert events[end]["output_index"] == index
        item_types.append(kind)
        position = end + 1
    return item_types
