"""Sessions of the built-in tools, one per response chain: python's process with its
namespace, the browser's pages and cursors. A chain continues (previous_response_id) in the
same session while it is in use; one idle for `ttl_s` is closed, and so is every session
when the router stops. A session lives in the router that opened it: a chain continued on
another router starts a fresh one there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from oss_serve.common.logging import get_logger
from oss_serve.router.tool_set import RequestTools
from oss_serve.tools.base import ToolExecutor

log = get_logger(__name__)


class ToolSessions:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: dict[str, tuple[float, set[ToolExecutor]]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session: str) -> bool:
        return session in self._sessions

    def touch(self, session: str, executors: Iterable[ToolExecutor]) -> None:
        """The session was used now, by these executors (added to those it used before)."""
        _, known = self._sessions.get(session, (0.0, set()))
        self._sessions[session] = (self._clock(), known | set(executors))

    async def close(self, session: str) -> None:
        """Free what the session holds in every executor it used."""
        _, executors = self._sessions.pop(session, (0.0, set()))
        for executor in executors:
            try:
                await executor.close_session(session)
            except Exception as err:  # a failing close must not keep the others open
                log.warning(
                    "closing a tool session failed",
                    namespace=executor.namespace,
                    error=type(err).__name__,
                )

    async def end(self, tools: RequestTools, *, keep: bool) -> None:
        """A request with these tools ended: its built-in session is kept for the chain
        (`keep`, until idle for ttl_s) or closed now."""
        used = [tools.executors[name] for name in tools.builtin_names if name in tools.executors]
        if not used:
            return
        self.touch(tools.session, used)
        if not keep:
            await self.close(tools.session)

    async def sweep(self) -> int:
        """Close the sessions idle for ttl_s; how many were closed."""
        horizon = self._clock() - self.ttl_s
        expired = [s for s, (used, _) in self._sessions.items() if used <= horizon]
        for session in expired:
            await self.close(session)
        return len(expired)

    async def run(self, interval_s: float = 10.0) -> None:
        """Sweep until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):
                await self.sweep()

    async def aclose(self) -> None:
        for session in list(self._sessions):
            await self.close(session)
