"""Prefix-cache-aware routing: send a request where its prompt's KV blocks already are,
unless that replica's load costs more than recomputing the prefix elsewhere.

Cost of replica r (lower wins), in KV blocks of work, as an estimate of the request's
time to first token there:

    cost_r = overlap_weight * uncached_prompt_blocks_r + load_r

Uncached blocks are the prompt blocks r would have to prefill (the index folded from the
engines' KV events says which it holds). The load term is, by `load_measure`:

- "prefill" (default): the prefill work queued ahead of the request on r (uncached prompt
  blocks of requests routed but not yet running) plus one block per running sequence (its
  decode share of each step). This is what delays a first token.
- "kv_blocks": NVIDIA Dynamo's KV router term, the KV blocks held by running requests plus
  queued prompts. It charges a long-running decode by its whole context, so a replica
  holding a conversation's cached history repels that conversation's next turn as soon as
  another request with a long context runs there (measured in benchmarks/routing.py).

A request for a LoRA adapter costs `adapter_affinity_blocks` more on a replica that does
not hold the adapter in its device slots (it would load it first; the registry says which
hold it). Both terms are blocks, so one weight trades them and no threshold is needed. On top, the
SGLang guard: when request counts are imbalanced (max - min > abs and max > rel * min)
route least-load, whatever the cache says. Ties go to fewer requests, then to the replica
with fewer indexed blocks (more free cache, SGLang's "smallest tree"), then rotate.

The chosen replica is recorded in the index at once (as SGLang's approximate tree does),
so a burst of requests with one new prefix lands together before the engines' events
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

LOAD_MEASURES = ("prefill", "kv_blocks")


class PrefixAware:
    name = "prefix_aware"

    def __init__(
        self,
        index: PrefixIndex,
        *,
        overlap_weight: float = 1.0,
        balance_abs_threshold: int = 8,
        balance_rel_threshold: float = 1.5,
        load_measure: str = "prefill",
        adapter_affinity_blocks: float = 8.0,
    ) -> None:
        if overlap_weight < 0:
            raise ValueError(f"overlap_weight must be >= 0, got {overlap_weight}")
        if load_measure not in LOAD_MEASURES:
            raise ValueError(
                f"load_measure must be one of {', '.join(LOAD_MEASURES)}, got {load_measure!r}"
            )
        self.load_measure = load_measure
        self.index = index
        self.overlap_weight = overlap_weight
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.adapter_affinity_blocks = adapter_affinity_blocks
        self.mean_prompt_blocks = 0.0
        self.mean_uncached_blocks = 0.0
        self._turn = 0

    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> RouteDecision:
        require_candidates(candidates)
        self._turn += 1
        prompt_blocks = -(-request.num_prompt_tokens // request.prompt.block_size)
        if len(candidates) > 1 and is_imbalanced(
            candidates, self.balance_abs_threshold, self.balance_rel_threshold
        ):
            chosen = least_loaded(candidates, self._turn, request.adapter)
            self._observe(prompt_blocks, prompt_blocks)
            return RouteDecision(chosen.replica_id, reason="imbalanced")
        matched = self.index.match(request.prompt) if self.overlap_weight else {}
        best: tuple[float, int, int, int] | None = None
        chosen = candidates[0]
        for position, candidate in enumerate(candidates):
            cached = matched.get(candidate.replica_id, 0)
            cost = self.overlap_weight * (prompt_blocks - cached) + self._load(candidate)
            if request.adapter and not candidate.load.holds_adapter(request.adapter):
                cost += self.adapter_affinity_blocks
            rotation = (position - self._turn) % len(candidates)
            key = (cost, candidate.requests, self.index.block_count(candidate.replica_id), rotation)
            if best is None or key < best:
                best, chosen = key, candidate
        hit = matched.get(chosen.replica_id, 0)
        self._observe(prompt_blocks, prompt_blocks - hit)
        return RouteDecision(
            chosen.replica_id, matched_blocks=hit, reason="prefix" if hit else "load"
        )

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        if self.overlap_weight:
            self.index.store(replica_id, request.prompt.all())

    def _load(self, candidate: Candidate) -> float:
        if self.load_measure == "kv_blocks":
            return candidate.active_blocks(self.mean_prompt_blocks)
        return candidate.prefill_ahead_blocks(self.mean_uncached_blocks) + candidate.load.running

    def _observe(self, prompt_blocks: int, uncached_blocks: int) -> None:
        """Running means of prompt size and of what routing left uncached: the block cost of
        a queued request known only by count."""
        if self.mean_prompt_blocks == 0.0:
            self.mean_prompt_blocks, self.mean_uncached_blocks = (
                float(prompt_blocks),
                float(uncached_blocks),
            )
            return
        self.mean_prompt_blocks += 0.05 * (prompt_blocks - self.mean_prompt_blocks)
        self.mean_uncached_blocks += 0.05 * (uncached_blocks - self.mean_uncached_blocks)
