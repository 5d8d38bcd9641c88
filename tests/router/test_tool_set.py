"""A request's server-side tools: refused (naming `tools[i]`) unless the server enables
them, run in the sandboxed python of their session, and the session closed when its
request is unstored or its chain idles past the TTL."""

from __future__ import annotations

import pytest

from oss_serve.common.settings import Settings
from oss_serve.harmony import BuiltinToolCall
from oss_serve.harmony.server_tools import server_tool_request
from oss_serve.router.errors import InvalidRequest
from oss_serve.router.tool_sessions import ToolSessions
from oss_serve.router.tool_set import open_request_tools
from oss_serve.tools.server_tools import ServerTools
from tests.tools.python.conftest import needs_bwrap

MCP_ENTRY = {
    "type": "mcp",
    "server_label": "weather",
    "server_url": "http://203.0.113.9/mcp",
    "require_approval": "never",
}


@pytest.fixture
async def python_tools():
    tools = ServerTools.from_settings(Settings(tools=["python"]))
    try:
        yield tools
    finally:
        await tools.aclose()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("entries", "field"),
    [
        ([{"type": "function", "name": "f"}, {"type": "web_search_preview"}], "tools[1]"),
        ([{"type": "code_interpreter", "container": {"type": "auto"}}], "tools[0]"),
        ([MCP_ENTRY], "tools[0]"),
    ],
)
async def test_tools_the_server_does_not_enable_are_refused_naming_the_entry(entries, field):
    with pytest.raises(InvalidRequest) as refused:
        await open_request_tools(None, server_tool_request(entries), "ts_1")
    assert refused.value.field == field
    assert "--tools" in refused.value.message


@needs_bwrap
async def test_a_tool_not_among_the_enabled_ones_is_refused(python_tools):
    request = server_tool_request([{"type": "code_interpreter"}, {"type": "web_search"}])
    with pytest.raises(InvalidRequest) as refused:
        await open_request_tools(python_tools, request, "ts_1")
    assert refused.value.field == "tools[1]"


@needs_bwrap
async def test_an_mcp_server_outside_the_allow_list_is_refused_naming_its_url():
    tools = ServerTools.from_settings(
        Settings(tools=["mcp"], mcp_allowed_urls=["http://127.0.0.1:9/mcp"])
    )
    with pytest.raises(InvalidRequest) as refused:
        await open_request_tools(tools, server_tool_request([MCP_ENTRY]), "ts_1")
    assert refused.value.field == "tools[0].server_url"


@needs_bwrap
async def test_python_runs_in_its_session_and_an_unstored_request_closes_it(python_tools):
    sessions = ToolSessions(ttl_s=600)
    request = server_tool_request([{"type": "code_interpreter", "container": {"type": "auto"}}])
    tools = await open_request_tools(python_tools, request, "ts_chain")
    assert tools.builtin_names == ("python",) and tools.kind_of("python") == "python"
    first = await tools.call(BuiltinToolCall("python", "analysis", "x = 6 * 7\nprint(x)"))
    second = await tools.call(BuiltinToolCall("python", "analysis", "print(x + 1)"))
    assert (first.error, first.text.strip(), second.text.strip()) == (False, "42", "43")
    unknown = await tools.call(BuiltinToolCall("shell", "analysis", "ls"))
    assert unknown.error and "no tool 'shell'" in unknown.text
    await sessions.end(tools, keep=True)
    assert "ts_chain" in sessions
    await sessions.end(tools, keep=False)
    assert "ts_chain" not in sessions
    fresh = await tools.call(BuiltinToolCall("python", "analysis", "print(x)"))
    assert "NameError" in fresh.text  # the closed session's namespace is gone
    await python_tools.close_session("ts_chain")


@needs_bwrap
async def test_a_chain_idle_past_the_ttl_is_closed_by_the_sweep(python_tools):
    now = [0.0]
    sessions = ToolSessions(ttl_s=60, clock=lambda: now[0])
    request = server_tool_request([{"type": "code_interpreter"}])
    tools = await open_request_tools(python_tools, request, "ts_idle")
    await tools.call(BuiltinToolCall("python", "analysis", "y = 1"))
    await sessions.end(tools, keep=True)
    now[0] = 59.0
    assert await sessions.sweep() == 0 and "ts_idle" in sessions
    now[0] = 61.0
    assert await sessions.sweep() == 1 and len(sessions) == 0
    after = await tools.call(BuiltinToolCall("python", "analysis", "print(y)"))
    assert "NameError" in after.text
    await python_tools.close_session("ts_idle")
