"""MCP servers as tool namespaces (the client is completed in the next change; until then
every call answers with an error the model can read)."""

from __future__ import annotations

from oss_serve.tools.base import ToolCall, ToolDescription, ToolOutput


class McpToolCache:
    """Tool lists per server (URL and headers), reused for `ttl_s`."""

    def __init__(self, *, ttl_s: float) -> None:
        self.ttl_s = ttl_s


class McpExecutor:
    """The tools of one MCP server, under the namespace `server_label`."""

    def __init__(
        self,
        *,
        server_label: str,
        server_url: str,
        headers: dict[str, str],
        allowed_tools: list[str] | None,
        timeout_s: float,
        output_max_bytes: int,
        tool_cache: McpToolCache,
    ) -> None:
        self.namespace = server_label
        self._server_url = server_url
        self._headers = headers
        self._allowed_tools = allowed_tools
        self._timeout_s = timeout_s
        self._output_max_bytes = output_max_bytes
        self._tool_cache = tool_cache

    async def list_tools(self) -> list[ToolDescription]:
        return []

    async def call(self, call: ToolCall) -> ToolOutput:
        return ToolOutput(author=call.recipient, text="MCP tools are not available yet", error=True)

    async def close_session(self, session: str) -> None:
        return None

    async def aclose(self) -> None:
        return None
