"""The one error a request's tool configuration raises for the API to answer."""

from __future__ import annotations


class ToolConfigError(ValueError):
    """A request's tool that this server does not allow or cannot use; `field` is the
    request field to name in the answer ("tools[1].server_url"), `http_status` its status
    (400, or 424 when a named MCP server fails)."""

    http_status = 400

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field
