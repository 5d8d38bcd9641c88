"""Routing policies behind one protocol, built by name (one file per policy)."""

from __future__ import annotations

from oss_serve.router.policies.base import (
    Candidate,
    RouteDecision,
    RouteRequest,
    RoutingPolicy,
    is_imbalanced,
    least_loaded,
)
from oss_serve.router.policies.least_load import LeastLoad
from oss_serve.router.policies.prefix_aware import PrefixAware
from oss_serve.router.policies.round_robin import RoundRobin
from oss_serve.router.prefix_index import PrefixIndex

POLICY_NAMES = ("round_robin", "least_load", "prefix_aware")


def make_policy(
    name: str,
    *,
    index: PrefixIndex | None = None,
    overlap_weight: float = 1.0,
    balance_abs_threshold: int = 8,
    balance_rel_threshold: float = 1.5,
    load_measure: str = "prefill",
    adapter_affinity_blocks: float = 8.0,
) -> RoutingPolicy:
    """Build a policy by its name; prefix_aware needs the router's prefix index."""
    if name == "round_robin":
        return RoundRobin()
    if name == "least_load":
        return LeastLoad()
    if name == "prefix_aware":
        return PrefixAware(
            index if index is not None else PrefixIndex(),
            overlap_weight=overlap_weight,
            balance_abs_threshold=balance_abs_threshold,
            balance_rel_threshold=balance_rel_threshold,
            load_measure=load_measure,
            adapter_affinity_blocks=adapter_affinity_blocks,
        )
    raise ValueError(f"unknown routing policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")


__all__ = [
    "POLICY_NAMES",
    "Candidate",
    "LeastLoad",
    "PrefixAware",
    "RoundRobin",
    "RouteDecision",
    "RouteRequest",
    "RoutingPolicy",
    "is_imbalanced",
    "least_loaded",
    "make_policy",
]
