"""Regenerate the recorded load traces the autoscaler's decision tests replay.

Each trace is JSON: the pools' policy, the replica model (slots, service time, pod start-up
time) and one step per autoscaler interval with the arrival rate (requests/s) and the pools
that are out of capacity. Deterministic: `python tests/cluster/autoscale/traces/generate.py` rewrites
the same files.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

POOLS = [
    {
        "name": "a100",
        "min_replicas": 1,
        "max_replicas": 6,
        "cost_per_replica_hour": 3.0,
        "base_ttft_s": 0.5,
        "initial_replicas": 1,
    },
    {
        "name": "h100",
        "min_replicas": 1,
        "max_replicas": 8,
        "cost_per_replica_hour": 6.0,
        "base_ttft_s": 0.25,
        "initial_replicas": 1,
    },
    {
        "name": "rtx4090",
        "min_replicas": 0,
        "max_replicas": 10,
        "cost_per_replica_hour": 1.2,
        "base_ttft_s": 1.2,
        "initial_replicas": 0,
    },
]
POLICY = {
    "queue_wait_slo_s": 2.0,
    "ttft_slo_s": 3.0,
    "target_utilization": 0.8,
    "scale_up_cooldown_s": 60.0,
    "scale_down_cooldown_s": 300.0,
    "startup_grace_s": 120.0,
}
MODEL = {"interval_s": 15.0, "slots_per_replica": 32, "service_s": 20.0, "startup_s": 45.0}


def jitter(rng: random.Random, rate: float) -> float:
    return round(max(0.0, rate * rng.uniform(0.9, 1.1)), 3)


def burst(rng: random.Random) -> list[dict]:
    rates = [2.0] * 20 + [30.0] * 24 + [2.0] * 76
    return [{"rate": jitter(rng, r)} for r in rates]


def diurnal(rng: random.Random) -> list[dict]:
    # One day compressed to 480 intervals: trough 1 req/s at night, peak 30 req/s mid-day.
    steps = 480
    return [
        {"rate": jitter(rng, 1.0 + 29.0 * (0.5 - 0.5 * math.cos(2 * math.pi * i / steps)))}
        for i in range(steps)
    ]


def outage(rng: random.Random) -> list[dict]:
    out = []
    for i in range(160):
        step: dict = {"rate": jitter(rng, 12.0)}
        if 40 <= i < 120:
            step["unavailable"] = ["h100"]
        out.append(step)
    return out


# The outage trace: the h100 pool is the cheap workhorse, so losing it matters.
OUTAGE_POOLS = [
    {**POOLS[0], "cost_per_replica_hour": 6.0, "max_replicas": 8},
    {**POOLS[1], "cost_per_replica_hour": 3.0},
    {**POOLS[2], "max_replicas": 2},
]


def main() -> None:
    for name, make, pools in (
        ("burst", burst, POOLS),
        ("diurnal", diurnal, POOLS),
        ("outage", outage, OUTAGE_POOLS),
    ):
        rng = random.Random(name)
        trace = {"name": name, "pools": pools, "policy": POLICY, **MODEL, "steps": make(rng)}
        (HERE / f"{name}.json").write_text(json.dumps(trace, indent=1) + "\n")


if __name__ == "__main__":
    main()
