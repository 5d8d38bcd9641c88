"""Prefix-cache-aware routing: send a request where its prompt's KV blocks already are,
unless that replica's load costs more than recomputing the prefix elsewhere.

Cost of replica r, in KV blocks (lower wins), as NVIDIA Dynamo's KV router weighs it:

    cost_r = overlap_weight * uncached_prompt_blocks_r + active_blocks_r

where uncached blocks are the prompt blocks r would have to prefill (the index from the
engines' KV events says which it holds) and active blocks are the KV work already on r
(blocks in use, plus queued prompts). Both terms are blocks of work, so one weight trades
them and no threshold is needed. On top of that, SGLang's guard: when the replicas'
request counts are imbalanced (max - min > abs and max > rel * min) route least-load,
whatever the cache says. Ties go to fewer requests, then to the replica with fewer
indexed blocks (more free cache, SGLang's "smallest tree"), then rotate.

The chosen replica is recorded in the index at once (as SGLang's approximate tree does),
so a burst of requests with one new prefix lands together before the engine's events
arrive; the events then confirm or correct it.
"""

from __future__ import annotations

from collections.abc import Sequence

from oss_serve.router.policies.base import (
    Candidate,
    RouteDecision,
    RouteRequest,
    is_imbalanced,
    least_loaded,
    require_candidates,
)
from oss_serve.router.prefix_index import PrefixIndex


class PrefixAware:
    name = "prefix_aware"

    def __init__(
        self,
        index: PrefixIndex,
        *,
        overlap_weight: float = 1.0,
        balance_abs_threshold: int = 8,
        balance_rel_threshold: float = 1.5,
    ) -> None:
        if overlap_weight < 0:
            raise ValueError(f"overlap_weight must be >= 0, got {overlap_weight}")
        self.index = index
        self.overlap_weight = overlap_weight
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.mean_prompt_blocks = 0.0
        self._turn = 0

    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> RouteDecision:
        require_candidates(candidates)
        self._turn += 1
        prompt_blocks = -(-request.num_prompt_tokens // request.prompt.block_size)
        self._observe(prompt_blocks)
        if len(candidates) > 1 and is_imbalanced(
            candidates, self.balance_abs_threshold, self.balance_rel_threshold
        ):
            chosen = least_loaded(candidates, self._turn)
            return RouteDecision(chosen.replica_id, reason="imbalanced")
        matched = self.index.match(request.prompt) if self.overlap_weight else {}
        best: tuple[float, int, int, int] | None = None
        chosen = candidates[0]
        for position, candidate in enumerate(candidates):
            cached = matched.get(candidate.replica_id, 0)
            cost = self.overlap_weight * (prompt_blocks - cached) + candidate.active_blocks(
                self.mean_prompt_blocks
            )
            rotation = (position - self._turn) % len(candidates)
            key = (cost, candidate.requests, self.index.block_count(candidate.replica_id), rotation)
            if best is None or key < best:
                best, chosen = key, candidate
        hit = matched.get(chosen.replica_id, 0)
        return RouteDecision(
            chosen.replica_id, matched_blocks=hit, reason="prefix" if hit else "load"
        )

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        if self.overlap_weight:
            self.index.store(replica_id, request.prompt.all())

    def _observe(self, prompt_blocks: int) -> None:
        """Running mean of prompt size: the block cost of a queued request we know only by count."""
        if self.mean_prompt_blocks == 0.0:
            self.mean_prompt_blocks = float(prompt_blocks)
        else:
            self.mean_prompt_blocks += 0.05 * (prompt_blocks - self.mean_prompt_blocks)
