"""Bounded queues: admit a request only to replicas whose queue can still take it.

A replica's backlog is what waits for it: queued in Redis (reported), waiting in its
engine, routed by this router since its last report, plus its share of the overflow
stream. Its estimated wait is that backlog over its recent completion rate. When every
replica is over a bound, the request is refused with a retry-after (HTTP 429 /
RESOURCE_EXHAUSTED): it is never queued to be dropped later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from oss_serve.router.errors import Overloaded
from oss_serve.router.policies import Candidate

MAX_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class Admission:
    max_queue_wait_s: float = 30.0
    max_queued_per_replica: int = 256

    def backlog(self, candidate: Candidate, overflow_share: float) -> float:
        load = candidate.load
        return load.queued + load.waiting + candidate.unreported_requests + overflow_share

    def estimated_wait_s(self, candidate: Candidate, overflow_share: float = 0.0) -> float:
        rate = candidate.load.finished_per_s
        if rate <= 0:
            return 0.0  # no completions seen yet: only the length bound applies
        return self.backlog(candidate, overflow_share) / rate

    def admit(self, candidates: Sequence[Candidate], overflow_backlog: int = 0) -> list[Candidate]:
        """The candidates with queue room; raises Overloaded (with retry-after) if none."""
        if not candidates:
            return []
        share = overflow_backlog / len(candidates)
        room = [
            c
            for c in candidates
            if self.backlog(c, share) < self.max_queued_per_replica
            and self.estimated_wait_s(c, share) <= self.max_queue_wait_s
        ]
        if room:
            return room
        retry_after_s = min(self._time_to_room_s(c, share) for c in candidates)
        raise Overloaded(
            f"all {len(candidates)} replicas are at their queue bound "
            f"({self.max_queued_per_replica} requests or {self.max_queue_wait_s:g} s of "
            f"estimated wait); retry after {retry_after_s:.0f} s",
            retry_after_s=retry_after_s,
        )

    def _time_to_room_s(self, candidate: Candidate, share: float) -> float:
        rate = candidate.load.finished_per_s
        if rate <= 0:
            return 1.0
        backlog = self.backlog(candidate, share)
        over_count = backlog - self.max_queued_per_replica + 1
        over_wait = backlog / rate - self.max_queue_wait_s
        return min(MAX_RETRY_AFTER_S, max(1.0, over_count / rate, over_wait))
