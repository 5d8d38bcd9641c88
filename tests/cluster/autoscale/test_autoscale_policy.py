"""The autoscaler's decision function on recorded load traces and on hand-made rounds."""

from __future__ import annotations

import itertools

import pytest

from oss_serve.cluster.autoscale.policy import (
    AutoscalePolicy,
    AutoscaleState,
    LoadReport,
    PoolPolicy,
    QueueBacklog,
    Signals,
    decide,
)
from tests.cluster.autoscale.autoscale_sim import Round, load_trace, policy_of, simulate

pytestmark = pytest.mark.unit
TRACES = ("burst", "diurnal", "outage")


def total(round_: Round, attr: str) -> int:
    return sum(getattr(d, attr) for d in round_.decisions)


def backlog_exceeds_capacity(round_: Round, trace: dict) -> bool:
    """The queue holds more than the replicas asked for can take on (at target use)."""
    backlog = round_.signals.shared_backlog
    slots = trace["slots_per_replica"] * trace["policy"]["target_utilization"]
    in_service = sum(r.running for r in round_.signals.replicas)
    return backlog.undelivered > total(round_, "current") * slots - in_service


@pytest.mark.parametrize("name", TRACES)
def test_replicas_stay_within_min_and_max_on_every_round(name):
    trace = load_trace(name)
    policy = policy_of(trace)
    for round_ in simulate(trace):
        for d in round_.decisions:
            pool = policy.pool(d.pool)
            assert pool.min_replicas <= d.desired <= pool.max_replicas, (round_.t, d)


@pytest.mark.parametrize("name", TRACES)
def test_scales_up_within_one_interval_of_a_backlog(name):
    trace = load_trace(name)
    policy = policy_of(trace)
    rounds = simulate(trace)
    at_max = {p.name: p.max_replicas for p in policy.pools}
    checked = 0
    for i, round_ in enumerate(rounds[:-1]):
        if not backlog_exceeds_capacity(round_, trace):
            continue
        if all(round_.current(p) >= m for p, m in at_max.items()):
            continue  # nothing left to add
        window = [round_, rounds[i + 1]]
        assert any(total(r, "desired") > total(r, "current") for r in window), round_.t
        checked += 1
    assert checked > 0, "the trace never builds a backlog: it tests nothing"


@pytest.mark.parametrize("name", TRACES)
def test_scales_down_only_after_the_cooldown(name):
    trace = load_trace(name)
    cooldown_s = trace["policy"]["scale_down_cooldown_s"]
    last_change = {p["name"]: 0.0 for p in trace["pools"]}
    downs = 0
    for round_ in simulate(trace):
        for d in round_.decisions:
            if d.desired < d.current:
                assert round_.t - last_change[d.pool] >= cooldown_s, (round_.t, d)
                downs += 1
            if d.changed:
                last_change[d.pool] = round_.t
    assert downs > 0, "the trace never scales down: it tests nothing"


def test_burst_is_absorbed_and_released():
    rounds = simulate(load_trace("burst"))
    peak = max(total(r, "desired") for r in rounds)
    assert peak >= 15  # 30 req/s x 20 s / (32 slots x 0.8) = 24 replicas wanted
    assert total(rounds[-1], "desired") == 2  # back to the pools' min_replicas
    late = [r.signals.shared_backlog.oldest_wait_s for r in rounds[-60:]]
    assert max(late) == 0.0


def test_burst_first_adds_the_cheapest_pool_that_meets_the_slo():
    rounds = simulate(load_trace("burst"))
    first_up = next(r for r in rounds if total(r, "desired") > total(r, "current"))
    added = {d.pool: d.desired - d.current for d in first_up.decisions}
    assert added["rtx4090"] > 0  # cost 1.2, unqueued TTFT 1.2 s <= 3 s SLO
    assert added["h100"] == 0 or added["rtx4090"] == 10  # the dearest only once rtx is full


def test_diurnal_follows_the_day_without_flapping():
    rounds = simulate(load_trace("diurnal"))
    totals = [total(r, "desired") for r in rounds]
    n = len(totals)
    assert max(totals[n // 2 - 20 : n // 2 + 20]) > 2 * max(totals[:20])
    changes = [i for i in range(1, n) if totals[i] != totals[i - 1]]
    direction_flips = sum(
        1
        for a, b in itertools.pairwise(changes)
        if (totals[a] - totals[a - 1]) * (totals[b] - totals[b - 1]) < 0
    )
    assert direction_flips <= 2
    late = sum(1 for r in rounds if r.signals.shared_backlog.oldest_wait_s > 2.0)
    assert late / n < 0.05


def test_outage_moves_the_load_to_the_other_pools_and_holds_the_lost_one():
    trace = load_trace("outage")
    rounds = simulate(trace)
    interval = trace["interval_s"]
    before = rounds[39]
    during = [
        r
        for r in rounds
        if 40 * interval + trace["policy"]["startup_grace_s"] < r.t < 120 * interval
    ]
    assert before.live["h100"] >= 4  # the cheap workhorse carries most of the load
    for r in during:
        assert r.desired("h100") <= before.desired("h100")  # never adds to a lost pool
        assert r.live["h100"] == 0
    absorbing = during[len(during) // 2]
    assert absorbing.desired("a100") > before.desired("a100")
    recovered = [r.signals.shared_backlog.oldest_wait_s for r in during[len(during) // 2 :]]
    assert max(recovered) <= trace["policy"]["queue_wait_slo_s"]


def one_pool_policy(**overrides) -> AutoscalePolicy:
    pool = PoolPolicy(
        "a100", min_replicas=1, max_replicas=8, cost_per_replica_hour=1.0, base_ttft_s=0.3
    )
    return AutoscalePolicy(pools=(pool,), **overrides)


def replicas(n: int, running: int, now: float = 100.0) -> tuple[LoadReport, ...]:
    return tuple(LoadReport(f"r{i}", "a100", running, 0, 32, 0.4, now) for i in range(n))


def test_backlog_in_a_pool_stream_counts_as_demand():
    signals = Signals(100.0, {"a100": QueueBacklog(100, 0.5)}, QueueBacklog(), replicas(2, 20))
    decisions, _ = decide(one_pool_policy(), signals, {"a100": 2}, AutoscaleState(started_s=0.0))
    assert decisions[0].desired == 6  # (40 running + 100 queued) / (32 x 0.8) -> 6


def test_late_backlog_adds_replicas_once_per_scale_up_cooldown():
    policy = one_pool_policy(scale_up_cooldown_s=60.0)
    signals = Signals(100.0, {}, QueueBacklog(10, 5.0), replicas(2, 10))
    decisions, state = decide(policy, signals, {"a100": 2}, AutoscaleState(started_s=0.0))
    assert decisions[0].desired == 3 and "over SLO" in decisions[0].reason
    signals = Signals(130.0, {}, QueueBacklog(10, 35.0), replicas(3, 10, now=130.0))
    decisions, _ = decide(policy, signals, {"a100": 3}, state)
    assert decisions[0].desired == 3  # the new replica had 30 s; the cool-down is 60 s


def test_stale_load_reports_are_ignored():
    stale = replicas(2, 32, now=10.0)
    signals = Signals(100.0, {}, QueueBacklog(), stale)
    decisions, _ = decide(one_pool_policy(), signals, {"a100": 1}, AutoscaleState(started_s=0.0))
    assert decisions[0].desired == 1


def test_raises_a_pool_below_min_at_once():
    signals = Signals(100.0, {}, QueueBacklog(), ())
    decisions, _ = decide(one_pool_policy(), signals, {"a100": 0}, AutoscaleState(started_s=99.0))
    assert decisions[0].desired == 1


def test_pool_policy_rejects_min_above_max():
    with pytest.raises(ValueError, match="min_replicas"):
        PoolPolicy("x", min_replicas=3, max_replicas=2, cost_per_replica_hour=1, base_ttft_s=0)
