"""The server-side tools of one request: which executor runs each harmony namespace, the
session the calls share, and what the prompt declares (built-in names, MCP namespaces).

Opening it checks the request against what the server enables (`--tools`) and lists each
named MCP server's tools, so a request that cannot be served is refused (400 naming
`tools[i]`, or 424 when an MCP server cannot be reached) before anything is queued.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from oss_serve.common.logging import get_logger
from oss_serve.harmony import BuiltinToolCall, HarmonyRequestError
from oss_serve.harmony.server_tools import (
    MCP,
    McpServerRequest,
    ServerToolRequest,
    mcp_namespace,
    mcp_tool_spec,
)
from oss_serve.harmony.tool_schema import ToolNamespace, ToolSpec
from oss_serve.router.errors import InvalidRequest, ToolServerFailed
from oss_serve.tools.base import ToolCall, ToolDescription, ToolExecutor, ToolOutput
from oss_serve.tools.mcp_client import McpExecutor
from oss_serve.tools.server_tools import ServerTools, ToolConfigError

log = get_logger(__name__)


@dataclass(frozen=True)
class McpListing:
    """One MCP server's tools as this request offers them (the `mcp_list_tools` item)."""

    server_label: str
    tools: tuple[ToolDescription, ...]


@dataclass
class RequestTools:
    """Executors by namespace ("python", "browser", an MCP server's label) for one request."""

    session: str
    builtin_names: tuple[str, ...] = ()  # what the system message declares
    namespaces: tuple[ToolNamespace, ...] = ()  # what the developer message declares
    listings: tuple[McpListing, ...] = ()
    executors: dict[str, ToolExecutor] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # namespace -> browser/python/mcp
    mcp_servers: list[McpExecutor] = field(default_factory=list)  # this request's, closed with it

    @property
    def is_empty(self) -> bool:
        return not self.executors

    def kind_of(self, recipient: str) -> str | None:
        """ "browser", "python" or "mcp" for a call the server runs; None for an unknown one."""
        return self.kinds.get(namespace_of(recipient))

    async def call(self, call: BuiltinToolCall) -> ToolOutput:
        """Run one call; a recipient nobody serves comes back as an error for the model."""
        executor = self.executors.get(namespace_of(call.recipient))
        if executor is None:
            available = ", ".join(sorted(self.executors)) or "none"
            return ToolOutput(
                author=call.recipient,
                text=f"error: there is no tool {call.recipient!r} (available: {available})",
                error=True,
            )
        try:
            return await executor.call(ToolCall(call.recipient, call.arguments, self.session))
        except Exception as err:  # an executor's own failure is still the model's to read
            log.warning("tool executor failed", recipient=call.recipient, error=type(err).__name__)
            return ToolOutput(
                author=call.recipient,
                text=f"error: the tool failed ({type(err).__name__}); try another way",
                error=True,
            )

    async def aclose(self) -> None:
        """Close this request's MCP connections (built-in sessions outlive the request)."""
        for server in self.mcp_servers:
            with contextlib.suppress(Exception):
                await server.close_session(self.session)
                await server.aclose()
        self.mcp_servers.clear()


def namespace_of(recipient: str) -> str:
    return recipient.split(".", 1)[0]


async def open_request_tools(
    provider: ServerTools | None, request: ServerToolRequest, session: str
) -> RequestTools:
    """The executors for the request's tools, once each is enabled and each MCP server listed."""
    enabled = provider.enabled if provider is not None else frozenset()
    for kind, entry_field in request.kinds.items():
        if provider is None or kind not in enabled:
            on = ",".join(sorted(enabled)) or "none"
            raise InvalidRequest(
                f"the {kind} tool is not enabled on this server (enabled: {on}; "
                "the operator turns tools on with --tools python,browser,mcp)",
                field=entry_field,
            )
    tools = RequestTools(session=session, builtin_names=tuple(sorted(request.builtins)))
    if provider is None:
        return tools
    for name, entry_field in request.builtins.items():
        try:
            tools.executors[name] = provider.builtin(name, field=entry_field)  # type: ignore[arg-type]
        except ToolConfigError as err:
            raise InvalidRequest(str(err), field=err.field) from err
        tools.kinds[name] = name
    try:
        for server in request.mcp_servers:
            await _add_mcp_server(tools, provider, server)
    except BaseException:
        await tools.aclose()
        raise
    return tools


async def _add_mcp_server(
    tools: RequestTools, provider: ServerTools, server: McpServerRequest
) -> None:
    try:
        executor = await provider.mcp_server(
            server_label=server.server_label,
            server_url=server.server_url,
            headers=server.headers,
            allowed_tools=server.allowed_tools,
            field=server.field,
        )
    except ToolConfigError as err:
        raise InvalidRequest(str(err), field=err.field) from err
    tools.mcp_servers.append(executor)
    try:
        listed = await executor.list_tools()
    except ToolConfigError as err:  # McpServerUnavailable: unreachable, not MCP, too slow
        raise ToolServerFailed(str(err), field=err.field) from err
    except Exception as err:
        log.warning(
            "mcp list_tools failed", server_label=server.server_label, error=type(err).__name__
        )
        raise ToolServerFailed(
            f"the MCP server {server.server_label!r} did not list its tools ({type(err).__name__})",
            field=f"{server.field}.server_url",
        ) from err
    offered = [t for t in listed if server.allowed_tools is None or t.name in server.allowed_tools]
    tools.executors[server.server_label] = executor
    tools.kinds[server.server_label] = MCP
    tools.listings += (McpListing(server.server_label, tuple(offered)),)
    tools.namespaces += (mcp_namespace(server, [_spec(server, t) for t in offered]),)


def _spec(server: McpServerRequest, tool: ToolDescription) -> ToolSpec:
    """A listed tool as the developer message prints it (its schema normalised like a
    function's); a name or schema harmony cannot carry fails the request (424)."""
    try:
        return mcp_tool_spec(tool.name, tool.description or "", tool.input_schema)
    except HarmonyRequestError as err:
        raise ToolServerFailed(
            f"the MCP server {server.server_label!r} lists a tool that cannot be offered "
            f"({tool.name[:64]!r}: {err.problem}); leave it out with allowed_tools",
            field=f"{server.field}.allowed_tools",
        ) from err
