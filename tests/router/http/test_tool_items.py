"""Output items and streaming events of server-side tool calls: each in OpenAI's documented
order between the reasoning and message items around it, and every event and item parsed
by the official `openai` package's models."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import ResponseOutputItem
from pydantic import TypeAdapter

from oss_serve.harmony import BuiltinToolCall
from oss_serve.router.chat import ChatChunk
from oss_serve.router.http.responses_api import OutputItems
from oss_serve.router.tool_loop import ToolCallFinished, ToolCallStarted
from oss_serve.router.tool_set import McpListing
from oss_serve.tools.base import ToolDescription, ToolOutput
from tests.router.http.tool_events import check_documented_order, parsed

pytestmark = pytest.mark.unit

_ITEM = TypeAdapter(ResponseOutputItem)
SESSION = "ts_0123"


def _call(index: int, kind: str, recipient: str, arguments: str, channel: str = "analysis"):
    call = BuiltinToolCall(recipient, channel, arguments)
    return ToolCallStarted(index, kind, call), call


def _stream(items: OutputItems, steps: list) -> list[dict]:
    """The events of one response: created/in_progress, the items, completed."""
    events: list[dict] = [{"type": "response.created"}, {"type": "response.in_progress"}]
    for step in steps:
        if isinstance(step, McpListing):
            events += items.add_listing(step)
        elif isinstance(step, ChatChunk):
            events += items.feed(step)
        else:
            events += items.feed_tool(step)
    events += items.close()
    events.append({"type": "response.completed"})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def _with_responses(events: list[dict]) -> list[dict]:
    """The lifecycle events carry the response object; a minimal valid one for parsing."""
    response = {
        "id": "resp_1", "object": "response", "created_at": 0, "model": "m", "output": [],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "status": "completed",
    }  # fmt: skip
    return [
        {**e, "response": response} if e["type"].count(".") == 1 and "item" not in e else e
        for e in events
    ]


def test_calls_of_every_kind_stream_in_documented_order_and_parse():
    items = OutputItems(SESSION)
    forecast = ToolDescription("forecast", "Forecast of a city.", {"type": "object"})
    started_py, call_py = _call(0, "python", "python", "print(6 * 7)")
    started_ws, call_ws = _call(1, "browser", "browser.search", '{"query": "oss-serve tools"}')
    started_mcp, call_mcp = _call(
        2, "mcp", "weather.forecast", '{"city": "Paris"}', channel="commentary"
    )
    sources = [{"type": "url", "url": "file:///docs/tools.md"}]
    steps = [
        McpListing("weather", (forecast,)),
        ChatChunk("r", reasoning="Compute it."),
        started_py,
        ToolCallFinished(
            0, "python", call_py,
            ToolOutput("python", "42\n", details={"outputs": [{"type": "logs", "logs": "42\n"}]}),
        ),
        ChatChunk("r", reasoning="Search."),
        started_ws,
        ToolCallFinished(
            1, "browser", call_ws,
            ToolOutput("browser.search", "[0] ...",
                       details={"action": {"type": "search", "query": "oss-serve tools"},
                                "sources": sources}),
        ),
        started_mcp,
        ToolCallFinished(2, "mcp", call_mcp, ToolOutput("weather.forecast", "timeout", error=True)),
        ChatChunk("r", content="42; see 【0†L1】."),
    ]  # fmt: skip
    events = _stream(items, steps)
    kinds = check_documented_order(events)
    assert kinds == [
        "mcp_list_tools", "reasoning", "code_interpreter_call", "reasoning", "web_search_call",
        "mcp_call", "message",
    ]  # fmt: skip
    parsed(_with_responses(events))  # every event, strictly, as the client's models
    for item in items.items:
        _ITEM.validate_python(item)
    listing, _, python, _, search, mcp, _ = items.items
    assert listing["tools"][0]["name"] == "forecast"
    assert (python["code"], python["outputs"], python["container_id"]) == (
        "print(6 * 7)",
        [{"type": "logs", "logs": "42\n"}],
        SESSION,
    )
    assert search["action"] == {"type": "search", "query": "oss-serve tools", "sources": sources}
    assert (mcp["status"], mcp["name"], mcp["server_label"], mcp["output"]) == (
        "failed",
        "forecast",
        "weather",
        None,
    )
    assert mcp["error"]["content"][0]["text"] == "timeout"
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert all(item["status"] == "in_progress" for item in added if "status" in item)


def test_an_mcp_call_streams_its_arguments_and_completes_with_its_output():
    items = OutputItems(SESSION)
    started, call = _call(0, "mcp", "weather.forecast", '{"city":"Oslo"}', channel="commentary")
    events = _stream(
        items, [started, ToolCallFinished(0, "mcp", call, ToolOutput("weather.forecast", "snow"))]
    )
    check_documented_order(events)
    delta = next(e for e in events if e["type"] == "response.mcp_call_arguments.delta")
    assert json.loads(delta["delta"]) == {"city": "Oslo"}
    assert items.items[0]["output"] == "snow" and items.items[0]["status"] == "completed"


def test_a_call_to_a_tool_the_request_has_not_makes_no_item():
    items = OutputItems(SESSION)
    started, call = _call(0, "", "shell", "ls")
    events = _stream(
        items,
        [started, ToolCallFinished(0, "", call, ToolOutput("shell", "no such tool", error=True))],
    )
    assert check_documented_order(events) == []


@pytest.mark.parametrize(
    ("recipient", "arguments", "action"),
    [
        ("browser.search", '{"query": "q"}', {"type": "search", "query": "q"}),
        (
            "browser.open",
            '{"id": "https://x.test/a"}',
            {"type": "open_page", "url": "https://x.test/a"},
        ),
        ("browser.open", '{"id": 3}', {"type": "open_page", "url": None}),
        ("browser.find", '{"pattern": "p"}', {"type": "find_in_page", "pattern": "p", "url": ""}),
        ("browser.search", "not json", {"type": "search", "query": ""}),
    ],
)
def test_the_web_search_action_is_read_from_the_models_arguments(recipient, arguments, action):
    items = OutputItems(SESSION)
    started, _ = _call(0, "browser", recipient, arguments)
    items.feed_tool(started)
    assert items.items[0]["action"] == action
    _ITEM.validate_python({**items.items[0], "status": "completed"})


@pytest.mark.parametrize(
    ("told", "shown"),
    [
        ({"type": "find", "pattern": "8000", "url": "file:///d/ports.md"},
         {"type": "find_in_page", "pattern": "8000", "url": "file:///d/ports.md"}),
        ({"type": "open_page", "url": "file:///d/ports.md", "cursor": 2},
         {"type": "open_page", "url": "file:///d/ports.md"}),
        ({"type": "scroll"}, {"type": "search", "query": "q"}),
    ],
)  # fmt: skip
def test_the_browsers_account_of_its_action_is_shown_in_the_apis_shapes(told, shown):
    items = OutputItems(SESSION)
    started, call = _call(0, "browser", "browser.search", '{"query": "q"}')
    items.feed_tool(started)
    items.feed_tool(
        ToolCallFinished(
            0, "browser", call, ToolOutput("browser.search", "...", details={"action": told})
        )
    )
    assert items.items[0]["action"] == shown
    _ITEM.validate_python(items.items[0])
