"""The deliveries a replica holds, from the pull to the acknowledgement.

The puller counts those pulled but not yet taken in by the engine when it asks for room
(a burst is pulled at once, one entry per free slot and its KV blocks); the heartbeat
keeps every held delivery's claim alive; drain waits for them; the load report reads
how fast they finish.
"""

from __future__ import annotations

import asyncio
import collections
import time

from oss_serve.cluster.replica.queue import Delivery

FINISH_RATE_WINDOW_S = 30.0


class InFlight:
    def __init__(self) -> None:
        self.deliveries: dict[str, Delivery] = {}  # entry id -> delivery being served
        self.starting: dict[str, int] = {}  # pulled, not yet in the engine: entry id -> prompt len
        self.ended = asyncio.Event()  # set when a delivery ends: room may have opened
        self._finished_at: collections.deque[float] = collections.deque()

    @property
    def busy(self) -> bool:
        return bool(self.deliveries or self.starting)

    def pulled(self, delivery: Delivery, prompt_len: int) -> None:
        self.starting[delivery.entry_id] = prompt_len

    def begin(self, delivery: Delivery) -> None:
        self.deliveries[delivery.entry_id] = delivery

    def submitted(self, entry_id: str) -> None:
        """The engine counts the request from here on."""
        self.starting.pop(entry_id, None)

    def end(self, entry_id: str) -> None:
        self.starting.pop(entry_id, None)
        self.deliveries.pop(entry_id, None)
        self._finished_at.append(time.time())
        self.ended.set()

    def finished_per_s(self, since_ts: float) -> float:
        """Deliveries ended per second over the last FINISH_RATE_WINDOW_S (or since_ts)."""
        now = time.time()
        while self._finished_at and self._finished_at[0] < now - FINISH_RATE_WINDOW_S:
            self._finished_at.popleft()
        window_s = min(FINISH_RATE_WINDOW_S, max(1.0, now - since_ts))
        return len(self._finished_at) / window_s
