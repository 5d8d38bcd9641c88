"""Stopping background loops reliably (router and replica share it)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

from oss_serve.common.logging import get_logger

log = get_logger(__name__)


async def stop_tasks(tasks: list[asyncio.Task[None]], timeout_s: float = 3.0) -> None:
    """Cancel background loops and wait for them, but never forever: a loop whose
    cancellation was swallowed by a client library still has its stop flag set."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    if pending:
        log.warning("background tasks did not stop in time", count=len(pending))


_detached: set[asyncio.Future[object]] = set()


def detach(coroutine: Coroutine[object, object, object]) -> None:
    """Run clean-up to its end even though the calling task is being cancelled (a strong
    reference is kept until it is done)."""
    task = asyncio.ensure_future(coroutine)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
