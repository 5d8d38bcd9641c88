"""Bounded buffers for slow HTTP clients.

A response is written through uvicorn's transport, which stops taking bytes once 64 KiB
wait for a client that reads slowly (write flow control): the answer's producer then
waits, so what a slow reader costs the router is that buffer plus its request's tokens,
never a growing queue. A client that accepts no bytes at all for `stall_timeout_s` is
disconnected, which ends its stream and cancels its request everywhere: a reader that
stopped reading (but keeps its connection open) cannot hold a router's memory forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

from oss_serve.common.logging import get_logger

log = get_logger(__name__)
Message = dict[str, Any]


class ClientStalled(Exception):
    """The client accepted no response bytes for the stall limit."""


class StallLimit:
    """ASGI middleware: every response message must be accepted within `stall_timeout_s`."""

    def __init__(self, app: Any, stall_timeout_s: float) -> None:
        self.app = app
        self.stall_timeout_s = stall_timeout_s

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_within_limit(message: Message) -> None:
            try:
                async with asyncio.timeout(self.stall_timeout_s):
                    await send(message)
            except TimeoutError:
                raise ClientStalled(
                    f"the client read nothing for {self.stall_timeout_s:g} s"
                ) from None

        try:
            await self.app(scope, receive, send_within_limit)
        except* ClientStalled as stalled:
            log.warning(
                "disconnecting a client that stopped reading",
                path=scope.get("path", ""),
                reason=str(stalled.exceptions[0]),
            )
