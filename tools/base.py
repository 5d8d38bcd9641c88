"""The contract between the router's tool loop and the tool executors.

The model ends a turn with a harmony message addressed to a tool (`to=python`,
`to=browser.search`, `to=<mcp label>.<tool>`); the router hands it to the executor of that
namespace as a `ToolCall` and appends the `ToolOutput` as the tool's message before the
model continues. Calls of one response chain share a `session` (python's namespace, the
browser's pages and cursors), closed when the chain ends or expires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ToolCall:
    """One call as the model wrote it."""

    recipient: str  # harmony recipient: "python", "browser.search", "<server_label>.<tool>"
    arguments: str  # the message text: code for python, JSON for browser and MCP tools
    session: str  # the response chain it belongs to


@dataclass(frozen=True)
class ToolOutput:
    """What the model reads back, and what the API shows of the call."""

    author: str  # the tool message's author, the call's recipient ("browser.search", ...)
    text: str  # the tool message's content, already capped to the output limit
    error: bool = False  # the call failed; `text` says why, for the model to read
    # what the Responses output item of the call carries: for browser the action
    # ({"type": "search", "query": ...} / open / find) and its sources; for python the
    # code and outputs ([{"type": "logs", "logs": ...}]); for MCP name, arguments, output
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolDescription:
    """A tool of a namespace as the developer message declares it (MCP servers)."""

    name: str
    description: str
    input_schema: dict[str, Any]


class ToolExecutor(Protocol):
    """Runs the calls of one namespace ("python", "browser", or an MCP server's label)."""

    namespace: str

    async def call(self, call: ToolCall) -> ToolOutput:
        """Never raises for a failing tool: the error goes back to the model as output."""
        ...

    async def close_session(self, session: str) -> None:
        """Frees what the session holds (python's process, the browser's pages)."""
        ...

    async def aclose(self) -> None: ...
