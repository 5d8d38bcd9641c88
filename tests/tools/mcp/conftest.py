"""A real MCP server (the SDK's MCPServer, formerly FastMCP) on loopback, serving the same
tools over streamable HTTP and over SSE, recording the headers it receives."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from tests.router.servers import free_port


def build_server() -> MCPServer:
    server = MCPServer("oss-serve-test")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Always fails.")
    def fail() -> str:
        raise ToolError("broken on purpose")  # the message an MCP tool reports to clients

    @server.tool(description="Answers after a while.")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @server.tool(description="Returns a long text.")
    def long_text(size: int) -> str:
        return "z" * size

    return server


@dataclass
class McpTestServer:
    base_url: str
    received_headers: list[dict[str, str]] = field(default_factory=list)

    @property
    def streamable_url(self) -> str:
        return f"{self.base_url}/mcp"

    @property
    def sse_url(self) -> str:
        return f"{self.base_url}/sse"


class _HeaderRecorder:
    def __init__(self, app: Any, received: list[dict[str, str]]) -> None:
        self._app = app
        self._received = received

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self._received.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self._app(scope, receive, send)


def _serve(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test MCP server did not start")
        time.sleep(0.05)
    return server, thread


@pytest.fixture(scope="module", params=["streamable", "sse"])
def mcp_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, McpTestServer]]:
    """(transport, server): one module-wide server per transport."""
    transport = request.param
    port = free_port()
    served = McpTestServer(f"http://127.0.0.1:{port}")
    mcp = build_server()
    app = mcp.streamable_http_app() if transport == "streamable" else mcp.sse_app()
    server, thread = _serve(_HeaderRecorder(app, served.received_headers), port)
    yield transport, served
    server.should_exit = True
    thread.join(timeout=10)
