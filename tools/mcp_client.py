"""MCP servers as tool namespaces, through the official `mcp` SDK.

A request names a server (label, URL, headers, allowed tools); its tools become the
namespace `<label>` for the model, and a call to `<label>.<tool>` runs on the server. Each
list or call opens its own connection (the SDK's sessions are bound to the task that
opened them): streamable HTTP, or SSE when the URL's path ends in `/sse` or the server
does not speak streamable HTTP. Tool lists are cached per server and headers for a TTL.
A failing tool, an unknown one, a timeout or an unreachable server is an error output
for the model, never an exception. Headers carry credentials: they are never logged,
cached in the clear or shown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from oss_serve.common.logging import get_logger
from oss_serve.tools.arguments import ArgumentsError, json_object
from oss_serve.tools.base import ToolCall, ToolDescription, ToolOutput
from oss_serve.tools.errors import ToolConfigError
from oss_serve.tools.output_cap import cap_text

log = get_logger(__name__)

MAX_CACHED_SERVERS = 256
MAX_TOOL_PAGES = 20


class McpServerUnavailable(ToolConfigError):
    """The server's tool list could not be read, so its tools cannot be offered (OpenAI
    answers this with 424 Failed Dependency)."""

    http_status = 424


@dataclass(frozen=True)
class _CachedTools:
    expires_at: float
    tools: list[ToolDescription]


class McpToolCache:
    """Tool lists per server (URL and a hash of its headers), reused for `ttl_s`; one
    listing at a time per server."""

    def __init__(self, *, ttl_s: float, max_servers: int = MAX_CACHED_SERVERS) -> None:
        self.ttl_s = ttl_s
        self._max_servers = max_servers
        self._entries: OrderedDict[str, _CachedTools] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def key(url: str, headers: dict[str, str]) -> str:
        digest = hashlib.sha256(json.dumps(sorted(headers.items())).encode()).hexdigest()
        return f"{url}#{digest}"

    async def get(
        self, key: str, load: Callable[[], Awaitable[list[ToolDescription]]]
    ) -> list[ToolDescription]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._entries.get(key)
            if cached is not None and cached.expires_at > time.monotonic():
                return cached.tools
            try:
                tools = await load()
            except BaseException:
                if key not in self._entries:
                    self._locks.pop(key, None)  # URLs that never answer leave nothing behind
                raise
            self._entries[key] = _CachedTools(time.monotonic() + self.ttl_s, tools)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_servers:
                evicted, _ = self._entries.popitem(last=False)
                self._locks.pop(evicted, None)
            return tools


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
        field: str = "tools",
    ) -> None:
        self.namespace = server_label
        self._server_url = server_url
        self._headers = headers
        self._allowed_tools = set(allowed_tools) if allowed_tools is not None else None
        self._timeout_s = timeout_s
        self._output_max_bytes = output_max_bytes
        self._tool_cache = tool_cache
        self._field = field

    async def list_tools(self) -> list[ToolDescription]:
        """The server's tools this request allows; McpServerUnavailable when the server
        cannot be listed (unreachable, not MCP, too slow)."""
        key = McpToolCache.key(self._server_url, self._headers)
        try:
            tools = await self._tool_cache.get(key, self._fetch_tools)
        except Exception as error:
            reason = _reason(error, self._server_url)
            log.warning("mcp server tool list failed", server_label=self.namespace, reason=reason)
            raise McpServerUnavailable(
                f"could not list the tools of MCP server `{self.namespace}`: {reason}",
                field=f"{self._field}.server_url",
            ) from error
        return [tool for tool in tools if self._allows(tool.name)]

    async def call(self, call: ToolCall) -> ToolOutput:
        name = call.recipient.removeprefix(f"{self.namespace}.")
        details: dict[str, Any] = {
            "server_label": self.namespace,
            "name": name,
            "arguments": call.arguments,
        }
        try:
            arguments = _arguments(call.arguments)
            if not self._allows(name):
                raise _CallRefused(f"tool `{name}` is not allowed on `{self.namespace}`")
            result = await self._call_tool(name, arguments)
        except _CallRefused as refused:
            return self._error(call, details, str(refused))
        except Exception as error:
            reason = _reason(error, self._server_url)
            log.info("mcp tool call failed", server_label=self.namespace, tool=name, reason=reason)
            return self._error(
                call, details, f"calling `{name}` on `{self.namespace}` failed: {reason}"
            )
        text = cap_text(_result_text(result), self._output_max_bytes)
        if result.is_error:
            return self._error(call, details, text)
        details["output"] = text
        return ToolOutput(author=call.recipient, text=text, details=details)

    async def close_session(self, session: str) -> None:
        return None  # no connection outlives its call

    async def aclose(self) -> None:
        return None

    def _allows(self, name: str) -> bool:
        return self._allowed_tools is None or name in self._allowed_tools

    def _error(self, call: ToolCall, details: dict[str, Any], message: str) -> ToolOutput:
        text = cap_text(message, self._output_max_bytes)
        return ToolOutput(
            author=call.recipient, text=text, error=True, details={**details, "error": text}
        )

    async def _fetch_tools(self) -> list[ToolDescription]:
        async with self._client() as client:
            tools: list[ToolDescription] = []
            cursor: str | None = None
            for _ in range(MAX_TOOL_PAGES):
                page = await client.list_tools(cursor=cursor)
                tools += [
                    ToolDescription(tool.name, tool.description or "", dict(tool.input_schema))
                    for tool in page.tools
                ]
                cursor = page.next_cursor
                if cursor is None:
                    break
            return tools

    async def _call_tool(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        async with self._client() as client:
            return await client.call_tool(name, arguments)

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[Client]:
        """A connected client within the timeout: streamable HTTP first unless the URL
        names an SSE endpoint, then SSE when streamable HTTP cannot connect."""
        async with asyncio.timeout(self._timeout_s):
            use_sse = urlsplit(self._server_url).path.rstrip("/").endswith("/sse")
            if not use_sse:
                client = Client(
                    self._streamable(), read_timeout_seconds=self._timeout_s, cache=None
                )
                try:
                    await client.__aenter__()
                except Exception as error:
                    log.debug(
                        "mcp streamable http failed, trying sse",
                        reason=_reason(error, self._server_url),
                    )
                    use_sse = True
            if use_sse:
                client = Client(self._sse(), read_timeout_seconds=self._timeout_s, cache=None)
                await client.__aenter__()
            try:
                yield client
            finally:
                await client.__aexit__(None, None, None)

    def _streamable(self) -> Any:
        http_client = httpx2.AsyncClient(headers=self._headers, timeout=self._timeout_s)
        return _owning(
            streamable_http_client(self._server_url, http_client=http_client), http_client
        )

    def _sse(self) -> Any:
        return sse_client(
            self._server_url,
            headers=self._headers,
            timeout=self._timeout_s,
            sse_read_timeout=self._timeout_s,
        )


class _CallRefused(Exception):
    """A call this request does not allow or did not write as JSON."""


@asynccontextmanager
async def _owning(transport: Any, http_client: httpx2.AsyncClient) -> AsyncIterator[Any]:
    """The transport, and the HTTP client it was given closed after it."""
    async with http_client, transport as streams:
        yield streams


def _arguments(text: str) -> dict[str, Any]:
    try:
        return json_object(text)
    except ArgumentsError as error:
        raise _CallRefused(f"the arguments are not usable: {error}") from error


def _result_text(result: CallToolResult) -> str:
    parts = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{block.type} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


def _reason(error: BaseException, server_url: str) -> str:
    """The innermost cause in words, without the server's URL (its query may hold a key);
    the SDK's errors never hold the request's headers."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, TimeoutError):
        return "timed out"
    message = str(error).replace(server_url, "the server").strip().split("\n")[0][:300]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
