"""The demo MCP server: one tool, `roll_dice`, served over streamable HTTP by the `mcp` SDK.

`oss-serve up` runs it beside the demo model (which learnt to call it as `dice.roll_dice`)
so that `make up` shows a model-made MCP call end to end; the tests start it as a real MCP
server. `DEMO_MCP_TOOLS` is its tool list as a client receives it, which the demo corpus
declares in the developer message exactly as the router will (a test keeps the two equal).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import uvicorn

from oss_serve.common.http_serving import EmbeddedServer, bind_listening_socket
from oss_serve.tools.base import ToolDescription

DEMO_MCP_LABEL = "dice"  # the server_label the README and the demo model use
ROLL_DICE = "roll_dice"
ROLL_DICE_DESCRIPTION = "Roll a die with the given number of sides and return the number it shows."
MCP_PATH = "/mcp"
START_TIMEOUT_S = 15.0

DEMO_MCP_TOOLS: tuple[ToolDescription, ...] = (
    ToolDescription(
        ROLL_DICE,
        ROLL_DICE_DESCRIPTION,
        {
            "properties": {"sides": {"title": "Sides", "type": "integer"}},
            "required": ["sides"],
            "title": "roll_diceArguments",
            "type": "object",
        },
    ),
)


def roll(sides: int, rng: random.Random | None = None) -> int:
    """What the die shows: 1 to `sides`."""
    if sides < 2:
        raise ValueError("a die needs at least 2 sides")
    return (rng or random).randint(1, sides)


def build_demo_mcp_server() -> Any:
    """The SDK's MCPServer with the demo tool (typed Any: the SDK is imported lazily)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("oss-serve-demo")

    @server.tool(description=ROLL_DICE_DESCRIPTION)
    def roll_dice(sides: int) -> int:
        try:
            return roll(sides)
        except ValueError as err:
            raise ToolError(str(err)) from err

    return server


class DemoMcpServer:
    """The demo server on a loopback port, inside the caller's event loop (which owns the
    signals: the server never installs handlers of its own)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._socket = bind_listening_socket(host, port, "the demo MCP server", backlog=128)
        self.port = int(self._socket.getsockname()[1])
        self._server: Any = None  # uvicorn.Server
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The streamable HTTP endpoint a request names as `server_url`."""
        return f"http://{self._host}:{self.port}{MCP_PATH}"

    async def start(self) -> DemoMcpServer:
        app = build_demo_mcp_server().streamable_http_app()
        self._server = EmbeddedServer(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        )
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not self._server.started:
            if self._task.done() or asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise OSError(f"the demo MCP server did not start on {self.url}")
            await asyncio.sleep(0.02)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 10.0)
        self._server = self._task = None
        self._socket.close()
