"""The replica holding the fewest requests (running + waiting + queued), like a shortest queue;
among equals, one that already holds the request's LoRA adapter."""

from __future__ import annotations

from collections.abc import Sequence

from oss_serve.router.policies.base import (
    Candidate,
    RouteDecision,
    RouteRequest,
    least_loaded,
    require_candidates,
)


class LeastLoad:
    name = "least_load"

    def __init__(self) -> None:
        self._turn = 0

    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> RouteDecision:
        require_candidates(candidates)
        chosen = least_loaded(candidates, self._turn, request.adapter)
        self._turn += 1
        return RouteDecision(chosen.replica_id, reason="least_load")

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        return None
