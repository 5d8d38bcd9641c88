"""What a request may ask of the server's tools: enabled built-ins, allow-listed MCP
servers; everything else is a ToolConfigError naming the request field."""

from __future__ import annotations

import pytest

from oss_serve.common.settings import Settings
from oss_serve.tools.base import ToolCall
from oss_serve.tools.server_tools import ServerTools, ToolConfigError, url_allowed
from tests.tools.python.conftest import needs_bwrap

ALLOWED = ["https://mcp.example.com/v1", "http://127.0.0.1:8931"]


@pytest.mark.parametrize(
    "url",
    [
        "https://mcp.example.com/v1",
        "https://mcp.example.com/v1/",
        "https://mcp.example.com:443/v1/sse",
        "http://127.0.0.1:8931/mcp",
    ],
)
def test_urls_under_an_allowed_prefix_pass(url: str) -> None:
    assert url_allowed(url, ALLOWED)


@pytest.mark.parametrize(
    "url",
    [
        "https://mcp.example.com/v10",  # not a whole path segment
        "https://mcp.example.com.evil.net/v1",  # another host that starts alike
        "https://evil.net/?u=https://mcp.example.com/v1",
        "http://mcp.example.com/v1",  # another scheme
        "https://mcp.example.com:8443/v1",  # another port
        "https://user:pw@mcp.example.com/v1",
        "https://mcp.example.com/v1/../admin",
        "https://mcp.example.com/v1/%2e%2e/admin",
        "http://127.0.0.1:8932/mcp",
        "file:///etc/passwd",
        "http://[::1",
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    assert not url_allowed(url, ALLOWED)


def _tools(**fields: object) -> ServerTools:
    return ServerTools.from_settings(Settings(**fields))  # type: ignore[arg-type]


async def test_nothing_is_enabled_by_default() -> None:
    tools = _tools()
    assert tools.enabled == frozenset()
    with pytest.raises(ToolConfigError, match="--tools python") as refused:
        tools.builtin("python", field="tools[0]")
    assert refused.value.field == "tools[0]"
    with pytest.raises(ToolConfigError, match="--tools mcp") as refused:
        await tools.mcp_server(
            server_label="docs",
            server_url="https://mcp.example.com/v1",
            headers={},
            allowed_tools=None,
            field="tools[2]",
        )
    assert refused.value.field == "tools[2]"


async def test_mcp_servers_must_be_allow_listed() -> None:
    tools = _tools(tools=["mcp"], mcp_allowed_urls=ALLOWED)
    with pytest.raises(ToolConfigError, match="--mcp-allowed-urls") as refused:
        await tools.mcp_server(
            server_label="docs",
            server_url="https://elsewhere.example.com/v1",
            headers={"Authorization": "Bearer secret"},
            allowed_tools=None,
            field="tools[1]",
        )
    assert refused.value.field == "tools[1].server_url"
    assert "secret" not in str(refused.value)
    executor = await tools.mcp_server(
        server_label="docs",
        server_url="https://mcp.example.com/v1/mcp",
        headers={},
        allowed_tools=["search"],
    )
    assert executor.namespace == "docs"


@pytest.mark.parametrize("label", ["python", "browser", "functions", "1abc", "a.b", "", "x" * 65])
async def test_mcp_labels_must_be_plain_names_of_their_own(label: str) -> None:
    tools = _tools(tools=["mcp"], mcp_allowed_urls=ALLOWED)
    with pytest.raises(ToolConfigError) as refused:
        await tools.mcp_server(
            server_label=label,
            server_url="https://mcp.example.com/v1",
            headers={},
            allowed_tools=None,
            field="tools[0]",
        )
    assert refused.value.field == "tools[0].server_label"


@needs_bwrap
async def test_enabled_python_runs_sandboxed_and_sessions_close_through_server_tools() -> None:
    tools = _tools(tools=["python"], python_timeout_s=5.0, tool_output_max_bytes=200)
    try:
        python = tools.builtin("python")
        out = await python.call(ToolCall("python", "print('y' * 500)", session="chain"))
        assert len(out.text.encode()) <= 200 and "of 501 bytes shown" in out.text
        await python.call(ToolCall("python", "kept = 1", session="chain"))
        await tools.close_session("chain")
        again = await python.call(ToolCall("python", "kept", session="chain"))
        assert "NameError" in again.text
    finally:
        await tools.aclose()


async def test_enabled_browser_searches_the_docs_folder(tmp_path) -> None:
    (tmp_path / "guide.md").write_text("# Guide\n\nThe answer is forty-two.")
    tools = _tools(tools=["browser"], browser_docs_dir=tmp_path)
    try:
        out = await tools.builtin("browser").call(
            ToolCall("browser.search", '{"query": "answer"}', session="chain")
        )
        assert "【0†Guide†" in out.text
    finally:
        await tools.aclose()


def test_a_browser_without_docs_or_search_api_stops_start_up() -> None:
    with pytest.raises(ValueError, match=r"--browser-docs-dir .* --browser-search-url"):
        _tools(tools=["browser"])
