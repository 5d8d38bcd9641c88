"""The routing-policy protocol: pick one replica for a request from the healthy candidates.

As in sgl-router's `policies/`, a policy is one small object behind one protocol, built by
name (`make_policy`). The caller hands it only healthy replicas that serve the request's
model and still have queue room, so a policy never sees an empty list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from oss_serve.router.errors import Unavailable
from oss_serve.router.prefix_index import PromptBlocks
from oss_serve.streams.registry import ReplicaLoad


@dataclass
class Candidate:
    """A healthy replica as one router sees it: the last load report plus what it routed since."""

    load: ReplicaLoad
    unreported_requests: int = 0  # routed by this router after the replica's last report
    unreported_blocks: int = 0  # their prompt blocks not cached where they went

    @property
    def replica_id(self) -> str:
        return self.load.replica_id

    @property
    def requests(self) -> int:
        return self.load.requests + self.unreported_requests

    def active_blocks(self, mean_prompt_blocks: float) -> float:
        """Dynamo's load: KV blocks in use (running requests), plus queued prompts' blocks."""
        backlog = (self.load.waiting + self.load.queued) * mean_prompt_blocks
        return self.load.kv_blocks_used + backlog + self.unreported_blocks

    def prefill_ahead_blocks(self, mean_uncached_blocks: float) -> float:
        """Prompt blocks still to prefill before a new request's turn: requests routed here by
        this router since the last report, plus those the replica reports waiting/queued."""
        backlog = (self.load.waiting + self.load.queued) * mean_uncached_blocks
        return self.unreported_blocks + backlog


@dataclass(frozen=True)
class RouteRequest:
    """What a policy may look at: the prompt's lazily hashed blocks and its size."""

    request_id: str
    prompt: PromptBlocks
    session_key: str | None = None
    adapter: str | None = None  # the LoRA adapter it runs with (None: the base model)

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt.num_tokens


@dataclass(frozen=True)
class RouteDecision:
    replica_id: str
    matched_blocks: int = 0  # prompt blocks the replica is believed to hold
    reason: str = ""


class RoutingPolicy(Protocol):
    name: str

    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> RouteDecision:
        """Choose among `candidates` (non-empty, healthy, with queue room)."""
        ...

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        """The request was enqueued for `replica_id` (whoever chose it)."""
        ...


def require_candidates(candidates: Sequence[Candidate]) -> None:
    if not candidates:
        raise Unavailable("no healthy replica can take the request; retry shortly")


def least_loaded(
    candidates: Sequence[Candidate], turn: int = 0, adapter: str | None = None
) -> Candidate:
    """Fewest requests, then one already holding `adapter` (no load), then lowest KV usage;
    exact ties rotate with `turn`."""

    def key(candidate: Candidate) -> tuple[int, bool, float]:
        cold = adapter is not None and not candidate.load.holds_adapter(adapter)
        return candidate.requests, cold, candidate.load.kv_usage

    best = min(key(c) for c in candidates)
    tied = [c for c in candidates if key(c) == best]
    return tied[turn % len(tied)]


def is_imbalanced(
    candidates: Sequence[Candidate], abs_threshold: int, rel_threshold: float
) -> bool:
    """SGLang's test: (max - min) > abs_threshold and max > rel_threshold * min, in requests."""
    loads = [c.requests for c in candidates]
    high, low = max(loads), min(loads)
    return high - low > abs_threshold and high > rel_threshold * low
