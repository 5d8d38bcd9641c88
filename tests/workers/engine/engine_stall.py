"""Hold an AsyncEngine's thread still (as a long step would) to test what happens meanwhile."""

from __future__ import annotations

import asyncio
import threading

from oss_serve.workers.engine.async_engine import AsyncEngine


async def stall_engine_thread(engine: AsyncEngine, timeout_s: float = 10.0) -> threading.Event:
    """Returns once the engine thread is held; set the returned event to let it go on."""
    release, entered = threading.Event(), threading.Event()

    def stall(core: object) -> None:
        entered.set()
        release.wait(timeout_s)

    engine._submit(stall, None)
    await asyncio.to_thread(entered.wait, 5)
    return release
