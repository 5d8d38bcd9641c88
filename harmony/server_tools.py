"""The server-side tools a request asks for, read from its tool list.

The Responses API names them by OpenAI's hosted types: `web_search` / `web_search_preview`
is gpt-oss's built-in `browser`, `code_interpreter` its built-in `python` (both declared in
the system message, with the training-time texts), and each `mcp` entry a remote MCP
server whose tools the developer message declares as a namespace named by its
`server_label`. Chat Completions takes the same entries in an extension field. This module
only reads and checks the entries (errors name the field); the router decides whether the
server enables them and talks to the MCP servers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from oss_serve.harmony.builtin_tools import BROWSER, PYTHON
from oss_serve.harmony.conversation import FUNCTIONS_NAMESPACE
from oss_serve.harmony.errors import HarmonyRequestError
from oss_serve.harmony.request_fields import (
    as_list,
    as_mapping,
    checked_schema,
    function_name,
    optional_str,
    required_str,
)
from oss_serve.harmony.tool_schema import ToolNamespace, ToolSpec

MCP = "mcp"
# hosted tool type -> the server-side tool that runs it
HOSTED_TOOL_TYPES: dict[str, str] = {
    "web_search": BROWSER,
    "web_search_preview": BROWSER,
    "web_search_2025_08_26": BROWSER,
    "web_search_preview_2025_03_11": BROWSER,
    "code_interpreter": PYTHON,
    "mcp": MCP,
}
# a server label becomes a harmony namespace: `to=<label>.<tool>` must stay one header word
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
_RESERVED_LABELS = (FUNCTIONS_NAMESPACE, BROWSER, PYTHON)


@dataclass(frozen=True)
class McpServerRequest:
    """One `{"type": "mcp", ...}` entry: where the server is and which of its tools to offer."""

    field: str  # where the entry sits in the body ("tools[2]"), for errors about it
    server_label: str
    server_url: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    allowed_tools: tuple[str, ...] | None = None  # None: every tool the server lists
    server_description: str | None = None


@dataclass(frozen=True)
class ServerToolRequest:
    """The server-side tools of one request."""

    builtins: Mapping[str, str] = dataclasses.field(
        default_factory=dict
    )  # "browser"/"python" -> its field
    mcp_servers: tuple[McpServerRequest, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.builtins or self.mcp_servers)

    @property
    def kinds(self) -> dict[str, str]:
        """Each tool kind asked for ("browser", "python", "mcp") -> the first field asking."""
        kinds = dict(self.builtins)
        if self.mcp_servers:
            kinds[MCP] = self.mcp_servers[0].field
        return kinds


def is_hosted_tool(tool: Mapping[str, Any]) -> bool:
    return tool.get("type") in HOSTED_TOOL_TYPES


def server_tool_request(raw_tools: Any, field_name: str = "tools") -> ServerToolRequest:
    """The hosted entries of a tool list (function entries are skipped); errors name the field."""
    if raw_tools is None:
        return ServerToolRequest()
    builtins: dict[str, str] = {}
    servers: list[McpServerRequest] = []
    for index, raw_tool in enumerate(as_list(raw_tools, field_name)):
        entry_field = f"{field_name}[{index}]"
        tool = as_mapping(raw_tool, entry_field)
        kind = HOSTED_TOOL_TYPES.get(tool.get("type"))  # type: ignore[arg-type]
        if kind is None:
            continue
        if kind == MCP:
            server = _mcp_server(tool, entry_field)
            if any(known.server_label == server.server_label for known in servers):
                raise HarmonyRequestError(
                    f"{entry_field}.server_label",
                    f"{server.server_label!r} names two MCP servers; labels must be unique",
                )
            servers.append(server)
            continue
        if kind == PYTHON:
            _check_container(tool.get("container"), f"{entry_field}.container")
        if kind in builtins:
            raise HarmonyRequestError(entry_field, f"the {tool.get('type')} tool is listed twice")
        builtins[kind] = entry_field
    return ServerToolRequest(builtins, tuple(servers))


def mcp_namespace(server: McpServerRequest, tools: Sequence[ToolSpec]) -> ToolNamespace:
    """The developer-message namespace of an MCP server: its offered tools under its label."""
    return ToolNamespace(
        name=server.server_label, description=server.server_description, tools=tuple(tools)
    )


def mcp_tool_spec(name: str, description: str, input_schema: Mapping[str, Any]) -> ToolSpec:
    """A listed MCP tool as the developer message prints it, its schema normalised like a
    function's. Raises HarmonyRequestError when harmony cannot carry its name or schema."""
    return ToolSpec(
        function_name(name, "name"),
        description,
        checked_schema(input_schema, "input_schema", normalize=True),
    )


def _mcp_server(tool: Mapping[str, Any], entry_field: str) -> McpServerRequest:
    label = required_str(tool.get("server_label"), f"{entry_field}.server_label")
    if not _LABEL.match(label) or label in _RESERVED_LABELS:
        raise HarmonyRequestError(
            f"{entry_field}.server_label",
            f"{label!r} cannot name a tool namespace: use 1-64 of a-z, A-Z, 0-9, _ and -, "
            f"starting with a letter, other than {', '.join(_RESERVED_LABELS)}",
        )
    if tool.get("connector_id") is not None or tool.get("tunnel_id") is not None:
        raise HarmonyRequestError(
            f"{entry_field}.server_url", "only MCP servers named by server_url are supported"
        )
    url = required_str(tool.get("server_url"), f"{entry_field}.server_url")
    approval = tool.get("require_approval")
    if approval != "never":
        raise HarmonyRequestError(
            f"{entry_field}.require_approval",
            f"must be 'never' (got {approval!r}): this server runs MCP tools without "
            "approval requests",
        )
    return McpServerRequest(
        field=entry_field,
        server_label=label,
        server_url=url,
        headers=_headers(tool.get("headers"), f"{entry_field}.headers"),
        allowed_tools=_allowed_tools(tool.get("allowed_tools"), f"{entry_field}.allowed_tools"),
        server_description=optional_str(
            tool.get("server_description"), f"{entry_field}.server_description"
        ),
    )


def _headers(raw: Any, field_name: str) -> dict[str, str]:
    if raw is None:
        return {}
    headers = as_mapping(raw, field_name)
    for name, value in headers.items():
        required_str(value, f"{field_name}.{name}")
    return {str(name): str(value) for name, value in headers.items()}


def _allowed_tools(raw: Any, field_name: str) -> tuple[str, ...] | None:
    """A list of tool names, or OpenAI's filter `{"tool_names": [...]}`."""
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        if raw.get("read_only") is not None:
            raise HarmonyRequestError(
                f"{field_name}.read_only", "filtering by read-only hints is not supported"
            )
        names_field = f"{field_name}.tool_names"
        raw = raw.get("tool_names") or []
    else:
        names_field = field_name
    names = as_list(raw, names_field)
    return tuple(required_str(name, f"{names_field}[{i}]") for i, name in enumerate(names))


def _check_container(raw: Any, field_name: str) -> None:
    """`{"type": "auto"}` (or absent): the python session is the response chain."""
    if raw is None:
        return
    container = as_mapping(raw, field_name) if not isinstance(raw, str) else None
    if container is None or container.get("type") != "auto":
        raise HarmonyRequestError(
            field_name,
            'must be {"type": "auto"}: the python session follows the response chain '
            "(previous_response_id), not a named container",
        )
