"""The MCP client against a real MCP server, over streamable HTTP and over SSE: tools
listed (cached, filtered), called with JSON arguments, and every failure an error output
for the model, never an exception; the request's headers reach the server and nothing
else."""

from __future__ import annotations

import logging
import time

import pytest

from oss_serve.tools.base import ToolCall
from oss_serve.tools.mcp_client import McpExecutor, McpServerUnavailable, McpToolCache
from tests.router.servers import free_port
from tests.tools.mcp.conftest import McpTestServer

pytestmark = [pytest.mark.integration]
SECRET = "Bearer mcp-secret-token-123"


def executor_for(
    url: str,
    *,
    allowed_tools: list[str] | None = None,
    timeout_s: float = 10.0,
    cache: McpToolCache | None = None,
    output_max_bytes: int = 4096,
) -> McpExecutor:
    return McpExecutor(
        server_label="calc",
        server_url=url,
        headers={"Authorization": SECRET},
        allowed_tools=allowed_tools,
        timeout_s=timeout_s,
        output_max_bytes=output_max_bytes,
        tool_cache=cache or McpToolCache(ttl_s=60),
        field="tools[3]",
    )


def url_of(transport: str, server: McpTestServer) -> str:
    return server.streamable_url if transport == "streamable" else server.sse_url


async def test_tools_are_listed_with_their_schemas(mcp_server) -> None:
    transport, server = mcp_server
    tools = await executor_for(url_of(transport, server)).list_tools()
    by_name = {tool.name: tool for tool in tools}
    assert set(by_name) == {"add", "fail", "slow", "long_text"}
    assert by_name["add"].description == "Add two integers."
    assert by_name["add"].input_schema["properties"].keys() == {"a", "b"}
    assert any(h.get("authorization") == SECRET for h in server.received_headers)


async def test_allowed_tools_filters_the_list_and_the_calls(mcp_server) -> None:
    transport, server = mcp_server
    executor = executor_for(url_of(transport, server), allowed_tools=["add"])
    assert [tool.name for tool in await executor.list_tools()] == ["add"]
    refused = await executor.call(ToolCall("calc.fail", "{}", "chain"))
    assert refused.error and refused.text == "tool `fail` is not allowed on `calc`"


async def test_a_call_runs_on_the_server(mcp_server) -> None:
    transport, server = mcp_server
    out = await executor_for(url_of(transport, server)).call(
        ToolCall("calc.add", '{"a": 40, "b": 2}', "chain")
    )
    assert not out.error and out.text == "42"
    assert out.author == "calc.add"
    assert out.details == {
        "server_label": "calc",
        "name": "add",
        "arguments": '{"a": 40, "b": 2}',
        "output": "42",
    }


async def test_failing_and_unknown_tools_are_error_outputs(mcp_server) -> None:
    transport, server = mcp_server
    executor = executor_for(url_of(transport, server))
    failed = await executor.call(ToolCall("calc.fail", "", "chain"))
    assert failed.error and "broken on purpose" in failed.text
    assert failed.details["error"] == failed.text and "output" not in failed.details
    unknown = await executor.call(ToolCall("calc.nope", "{}", "chain"))
    assert unknown.error and "nope" in unknown.text
    bad_json = await executor.call(ToolCall("calc.add", "{a: 1", "chain"))
    assert bad_json.error and bad_json.text.startswith("the arguments are not usable: not JSON")
    wrong_args = await executor.call(ToolCall("calc.add", '{"a": "x"}', "chain"))
    assert wrong_args.error


async def test_a_slow_tool_times_out_as_an_error(mcp_server) -> None:
    transport, server = mcp_server
    executor = executor_for(url_of(transport, server), timeout_s=1.0)
    started = time.monotonic()
    out = await executor.call(ToolCall("calc.slow", '{"seconds": 5}', "chain"))
    assert time.monotonic() - started < 3.5
    assert out.error and "timed out" in out.text


async def test_long_outputs_are_capped(mcp_server) -> None:
    transport, server = mcp_server
    executor = executor_for(url_of(transport, server), output_max_bytes=256)
    out = await executor.call(ToolCall("calc.long_text", '{"size": 5000}', "chain"))
    assert len(out.text.encode()) <= 256 and "of 5000 bytes shown" in out.text


async def test_tool_lists_are_cached_per_server_and_headers(mcp_server) -> None:
    transport, server = mcp_server
    cache = McpToolCache(ttl_s=60)
    url = url_of(transport, server)
    await executor_for(url, cache=cache).list_tools()
    seen = len(server.received_headers)
    await executor_for(url, cache=cache, allowed_tools=["add"]).list_tools()
    assert len(server.received_headers) == seen  # served from the cache
    expired = McpToolCache(ttl_s=0)
    await executor_for(url, cache=expired).list_tools()
    seen = len(server.received_headers)
    await executor_for(url, cache=expired).list_tools()
    assert len(server.received_headers) > seen


async def test_an_unreachable_server_fails_listing_and_calls_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    executor = executor_for(url, timeout_s=3.0)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(McpServerUnavailable) as unavailable:
            await executor.list_tools()
        out = await executor.call(ToolCall("calc.add", '{"a": 1, "b": 2}', "chain"))
    assert unavailable.value.field == "tools[3].server_url"
    assert unavailable.value.http_status == 424
    assert out.error and out.text.startswith("calling `add` on `calc` failed:")
    assert "mcp-secret-token" not in caplog.text


async def test_an_sse_server_at_another_path_is_reached_by_falling_back() -> None:
    from tests.tools.mcp.conftest import _serve, build_server

    port = free_port()
    server, thread = _serve(build_server().sse_app(sse_path="/events"), port)
    try:
        executor = executor_for(f"http://127.0.0.1:{port}/events")
        assert "add" in {tool.name for tool in await executor.list_tools()}
        out = await executor.call(ToolCall("calc.add", '{"a": 1, "b": 2}', "chain"))
        assert out.text == "3"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def test_server_tools_hands_out_allow_listed_servers_that_work(mcp_server) -> None:
    from oss_serve.common.settings import Settings
    from oss_serve.tools.server_tools import ServerTools

    transport, server = mcp_server
    tools = ServerTools.from_settings(Settings(tools=["mcp"], mcp_allowed_urls=[server.base_url]))
    executor = await tools.mcp_server(
        server_label="calc",
        server_url=url_of(transport, server),
        headers={},
        allowed_tools=None,
    )
    assert {tool.name for tool in await executor.list_tools()} >= {"add"}
    assert (await executor.call(ToolCall("calc.add", '{"a": 2, "b": 2}', "chain"))).text == "4"
    await tools.aclose()


async def test_servers_that_never_answer_leave_no_cache_state_behind() -> None:
    cache = McpToolCache(ttl_s=60)
    for _ in range(3):
        url = f"http://127.0.0.1:{free_port()}/mcp"
        with pytest.raises(McpServerUnavailable):
            await executor_for(url, timeout_s=2.0, cache=cache).list_tools()
    assert not cache._entries and not cache._locks
