"""Round robin over the healthy replicas, in replica-id order (the baseline)."""

from __future__ import annotations

from collections.abc import Sequence

from oss_serve.router.policies.base import (
    Candidate,
    RouteDecision,
    RouteRequest,
    require_candidates,
)


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0

    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> RouteDecision:
        require_candidates(candidates)
        ordered = sorted(candidates, key=lambda c: c.replica_id)
        chosen = ordered[self._turn % len(ordered)]
        self._turn += 1
        return RouteDecision(chosen.replica_id, reason="round_robin")

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        return None
