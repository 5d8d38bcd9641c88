"""The tools a server may run for the model, built once from settings: the enabled built-in
executors (`python`, `browser`) and, per request, executors for the MCP servers a request
names (only those whose URL is allow-listed). What a request asks for that the server does
not allow is a `ToolConfigError` that names the request field, for a 400."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from oss_serve.common.logging import get_logger
from oss_serve.tools.base import ToolExecutor
from oss_serve.tools.browser.executor import BrowserExecutor
from oss_serve.tools.errors import ToolConfigError
from oss_serve.tools.mcp_client import McpExecutor, McpToolCache
from oss_serve.tools.python.executor import PythonExecutor
from oss_serve.tools.python.sandbox import SandboxLimits

if TYPE_CHECKING:
    from oss_serve.common.settings import Settings

__all__ = ["ServerTools", "ToolConfigError", "url_allowed"]

log = get_logger(__name__)

BUILTIN_NAMESPACES = ("python", "browser")
# an MCP server's label becomes a harmony namespace: a plain identifier, not a built-in one
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_RESERVED_LABELS = frozenset({"python", "browser", "functions", "container", "assistant"})


class ServerTools:
    """The router's entry to every server-side tool."""

    def __init__(
        self,
        *,
        enabled: frozenset[str],
        builtins: Mapping[str, ToolExecutor],
        mcp_allowed_urls: Sequence[str],
        mcp_timeout_s: float,
        mcp_tools: McpToolCache,
        output_max_bytes: int,
    ) -> None:
        self.enabled = enabled
        self._builtins = dict(builtins)
        self._mcp_allowed_urls = list(mcp_allowed_urls)
        self._mcp_timeout_s = mcp_timeout_s
        self._mcp_tools = mcp_tools
        self._output_max_bytes = output_max_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTools:
        """Builds the enabled executors; a python tool without a usable sandbox (and
        without --allow-unsandboxed-python) stops start-up here with the reason."""
        enabled = frozenset(settings.tools)
        builtins: dict[str, ToolExecutor] = {}
        if "python" in enabled:
            builtins["python"] = PythonExecutor.create(
                SandboxLimits(
                    cell_timeout_s=settings.python_timeout_s,
                    memory_mb=settings.python_memory_mb,
                ),
                output_max_bytes=settings.tool_output_max_bytes,
                max_sessions=settings.python_max_sessions,
                allow_unsandboxed=settings.allow_unsandboxed_python,
            )
        if "browser" in enabled:
            builtins["browser"] = BrowserExecutor.from_settings(settings)
        if "mcp" in enabled and not settings.mcp_allowed_urls:
            log.warning("mcp tools are enabled but no --mcp-allowed-urls: every server is refused")
        return cls(
            enabled=enabled,
            builtins=builtins,
            mcp_allowed_urls=settings.mcp_allowed_urls,
            mcp_timeout_s=settings.mcp_timeout_s,
            mcp_tools=McpToolCache(ttl_s=settings.mcp_tools_cache_ttl_s),
            output_max_bytes=settings.tool_output_max_bytes,
        )

    def builtin(
        self, namespace: Literal["python", "browser"], *, field: str = "tools"
    ) -> ToolExecutor:
        executor = self._builtins.get(namespace)
        if executor is None:
            raise ToolConfigError(
                f"the {namespace} tool is not enabled on this server (start it with "
                f"--tools {namespace})",
                field=field,
            )
        return executor

    async def mcp_server(
        self,
        *,
        server_label: str,
        server_url: str,
        headers: Mapping[str, str],
        allowed_tools: Sequence[str] | None,
        field: str = "tools",
    ) -> McpExecutor:
        """An executor for one MCP server a request names; nothing is connected yet."""
        if "mcp" not in self.enabled:
            raise ToolConfigError(
                "mcp tools are not enabled on this server (start it with --tools mcp)",
                field=field,
            )
        if not _LABEL.match(server_label) or server_label in _RESERVED_LABELS:
            raise ToolConfigError(
                "server_label must start with a letter and hold only letters, digits, '_' "
                f"and '-' (at most 64), and not be one of {sorted(_RESERVED_LABELS)}",
                field=f"{field}.server_label",
            )
        if not url_allowed(server_url, self._mcp_allowed_urls):
            raise ToolConfigError(
                "server_url is not allowed on this server: it must start with one of the "
                "URLs given by --mcp-allowed-urls",
                field=f"{field}.server_url",
            )
        return McpExecutor(
            server_label=server_label,
            server_url=server_url,
            headers=dict(headers),
            allowed_tools=list(allowed_tools) if allowed_tools is not None else None,
            timeout_s=self._mcp_timeout_s,
            output_max_bytes=self._output_max_bytes,
            tool_cache=self._mcp_tools,
            field=field,
        )

    async def close_session(self, session: str) -> None:
        for executor in self._builtins.values():
            await executor.close_session(session)

    async def aclose(self) -> None:
        for executor in self._builtins.values():
            await executor.aclose()


def url_allowed(url: str, allowed_prefixes: Sequence[str]) -> bool:
    """True when `url` has the scheme, host and port of an allowed prefix and its path lies
    under the prefix's path (a whole path segment: "/mcp" allows "/mcp/x", not "/mcpx")."""
    try:
        target = urlsplit(url)
        target_port = target.port
    except ValueError:
        return False
    if target.scheme not in ("http", "https") or not target.hostname or target.username:
        return False
    for prefix in allowed_prefixes:
        allowed = urlsplit(prefix)
        try:
            allowed_port = allowed.port
        except ValueError:
            continue
        same_origin = (
            allowed.scheme == target.scheme
            and (allowed.hostname or "") == target.hostname
            and _port(allowed.scheme, allowed_port) == _port(target.scheme, target_port)
        )
        if same_origin and _path_under(target.path, allowed.path):
            return True
    return False


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else (443 if scheme == "https" else 80)


def _path_under(path: str, prefix: str) -> bool:
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        return False  # a server may resolve dot segments out from under the prefix
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")
