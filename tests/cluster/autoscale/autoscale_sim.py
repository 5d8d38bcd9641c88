"""Replay a recorded load trace through the autoscaler's decision function, closed loop.

A fluid model of the cluster: requests arrive in the shared overflow lane at the trace's
rate; each live replica serves `slots_per_replica` requests at a time for `service_s` each;
pods asked for become live `startup_s` later unless their pool is out of capacity. Every
interval the model's state becomes the Signals the autoscaler would read from Redis, and the
decisions become the replica counts Kubernetes would run.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oss_serve.cluster.autoscale.policy import (
    AutoscalePolicy,
    AutoscaleState,
    Decision,
    LoadReport,
    PoolPolicy,
    QueueBacklog,
    Signals,
    decide,
)

TRACES = Path(__file__).resolve().parent / "traces"


@dataclass(frozen=True)
class Round:
    t: float
    signals: Signals
    live: dict[str, int]
    decisions: list[Decision]

    def desired(self, pool: str) -> int:
        return next(d.desired for d in self.decisions if d.pool == pool)

    def current(self, pool: str) -> int:
        return next(d.current for d in self.decisions if d.pool == pool)


def load_trace(name: str) -> dict[str, Any]:
    trace: dict[str, Any] = json.loads((TRACES / f"{name}.json").read_text())
    return trace


def policy_of(trace: dict[str, Any]) -> AutoscalePolicy:
    pools = tuple(
        PoolPolicy(
            name=p["name"],
            min_replicas=p["min_replicas"],
            max_replicas=p["max_replicas"],
            cost_per_replica_hour=p["cost_per_replica_hour"],
            base_ttft_s=p["base_ttft_s"],
        )
        for p in trace["pools"]
    )
    return AutoscalePolicy(pools=pools, **trace["policy"])


class Cluster:
    """The fluid model: pods per pool (their ready times) and the shared FIFO queue."""

    def __init__(self, trace: dict[str, Any]) -> None:
        self.slots = trace["slots_per_replica"]
        self.service_s = trace["service_s"]
        self.startup_s = trace["startup_s"]
        self.dt = trace["interval_s"]
        self.pods = {p["name"]: [0.0] * p["initial_replicas"] for p in trace["pools"]}
        self.queue: deque[list[float]] = deque()  # [arrival time, requests]

    def live(self, t: float, unavailable: set[str]) -> dict[str, int]:
        return {
            pool: 0 if pool in unavailable else sum(1 for ready in pods if ready <= t)
            for pool, pods in self.pods.items()
        }

    def advance(self, t: float, rate: float, live: dict[str, int]) -> float:
        """Arrivals and service over one interval; returns requests in service."""
        self.queue.append([t, rate * self.dt])
        capacity = sum(live.values()) * self.slots * self.dt / self.service_s
        served = 0.0
        while self.queue and served < capacity:
            take = min(self.queue[0][1], capacity - served)
            served += take
            self.queue[0][1] -= take
            if self.queue[0][1] <= 1e-9:
                self.queue.popleft()
        return served * self.service_s / self.dt

    def signals(self, t: float, live: dict[str, int], in_service: float) -> Signals:
        total_live = sum(live.values())
        per_replica = min(self.slots, round(in_service / total_live)) if total_live else 0
        replicas = tuple(
            LoadReport(f"{pool}-{i}", pool, per_replica, 0, self.slots, 0.5, t)
            for pool, count in live.items()
            for i in range(count)
        )
        backlog = sum(n for _, n in self.queue)
        oldest = t - self.queue[0][0] if self.queue else 0.0
        return Signals(t, {}, QueueBacklog(round(backlog), oldest), replicas)

    def apply(self, t: float, decisions: list[Decision]) -> None:
        for d in decisions:
            pods = self.pods[d.pool]
            if d.desired > len(pods):
                pods.extend([t + self.startup_s] * (d.desired - len(pods)))
            del pods[d.desired :]


def simulate(trace: dict[str, Any]) -> list[Round]:
    policy = policy_of(trace)
    cluster = Cluster(trace)
    state = AutoscaleState(started_s=0.0)
    rounds = []
    for i, step in enumerate(trace["steps"]):
        t = i * cluster.dt
        live = cluster.live(t, set(step.get("unavailable", [])))
        in_service = cluster.advance(t, step["rate"], live)
        signals = cluster.signals(t, live, in_service)
        current = {pool: len(pods) for pool, pods in cluster.pods.items()}
        decisions, state = decide(policy, signals, current, state)
        rounds.append(Round(t, signals, live, decisions))
        cluster.apply(t, decisions)
    return rounds
