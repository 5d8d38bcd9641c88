"""The streams of background-response events this router serves (a create with `stream`,
or a resume with `starting_after`), all read through one blocking XREAD at a time: a
pooled Redis connection held per open stream would exhaust the router's pool.

Each follower has a cursor (the last sequence number it was given) and a bounded buffer;
the reader loop runs while anyone follows, reads every followed response from the
smallest cursor, and hands each follower the entries after its own. A follower whose
buffer is full (its client reads slowly) is left out of the reads until it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from oss_serve.common.logging import get_logger
from oss_serve.router.http.background_runs import BackgroundRuns
from oss_serve.streams.redis_client import TRANSIENT_ERRORS

log = get_logger(__name__)

BLOCK_MS = 250  # a new follower waits at most this long to join the reads
MAX_BUFFERED = 1024  # entries read ahead for one follower
RETRY_S = 0.5  # after Redis failed a read


@dataclass(eq=False)
class Follower:
    response_id: str
    cursor: int  # the last sequence number handed over
    entries: asyncio.Queue[tuple[int, dict[bytes, bytes]]] = field(default_factory=asyncio.Queue)


class EventTails:
    def __init__(self, runs: BackgroundRuns) -> None:
        self.runs = runs
        self._followers: set[Follower] = set()
        self._reader: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def follow(self, response_id: str, after: int) -> AsyncIterator[Follower]:
        """Entries of the response's event stream after sequence number `after`, as they
        come, in `follower.entries`."""
        follower = Follower(response_id, after)
        self._followers.add(follower)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_while_followed())
        try:
            yield follower
        finally:
            self._followers.discard(follower)

    async def _read_while_followed(self) -> None:
        while self._followers:
            ready = [f for f in self._followers if f.entries.qsize() < MAX_BUFFERED]
            if not ready:
                await asyncio.sleep(BLOCK_MS / 1000)
                continue
            cursors: dict[str, int] = {}
            for follower in ready:
                known = cursors.get(follower.response_id, follower.cursor)
                cursors[follower.response_id] = min(known, follower.cursor)
            try:
                found = await self.runs.read_many(cursors, BLOCK_MS)
            except TRANSIENT_ERRORS as err:
                log.warning("could not read background response events", error=str(err))
                await asyncio.sleep(RETRY_S)
                continue
            for follower in ready:
                for sequence_number, fields in found.get(follower.response_id, ()):
                    if sequence_number > follower.cursor:
                        follower.entries.put_nowait((sequence_number, fields))
                        follower.cursor = sequence_number
