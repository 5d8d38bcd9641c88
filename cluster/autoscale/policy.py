"""How many replicas each GPU pool should run: a pure function of load signals and state.

No I/O here: `decide(policy, signals, current, state)` maps what Redis shows (queue backlog,
age of the oldest undelivered request, each replica's load) and the replica counts Kubernetes
holds to one `Decision` per pool and the state the next round needs (cool-down clocks). The
autoscaler (cluster/autoscale/autoscaler.py) feeds it; tests replay recorded load traces through it.

Rules:
- demand is global: every request running, waiting or undelivered anywhere (the router
  spreads new work over all replicas by load, so capacity is fungible across pools);
- capacity is allocated cheapest pool first, among pools whose unqueued TTFT meets the SLO
  (then the fastest of the others), each pool from its min_replicas up to its max_replicas,
  so that the demand fills `target_utilization` of the slots (a replica's `max_running`);
- SLO: when the oldest undelivered request has waited longer than the queue-wait target, add
  replicas for the backlog at once, again cheapest first (at most once per scale-up
  cool-down, since new pods take a while to start);
- a pool whose replicas stay unready longer than `startup_grace_s` is out of capacity (node
  pool outage, no GPUs left): it is held at its count and the others absorb its load;
- down only after `scale_down_cooldown_s` of lower demand, to the peak need of that window;
- always within [min_replicas, max_replicas].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class PoolPolicy:
    name: str
    min_replicas: int
    max_replicas: int
    cost_per_replica_hour: float
    base_ttft_s: float  # TTFT of an unqueued request on this pool (prefill)

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"pool {self.name}: need 0 <= min_replicas ({self.min_replicas}) "
                f"<= max_replicas ({self.max_replicas})"
            )


@dataclass(frozen=True)
class AutoscalePolicy:
    pools: tuple[PoolPolicy, ...]
    queue_wait_slo_s: float = 2.0
    ttft_slo_s: float = 3.0
    target_utilization: float = 0.8
    scale_up_cooldown_s: float = 60.0
    scale_down_cooldown_s: float = 600.0
    startup_grace_s: float = 900.0
    scale_down_tolerance: float = 0.1  # scale down only when demand fell by more than this
    heartbeat_stale_s: float = 30.0  # a load report older than this is ignored
    default_slots_per_replica: int = 64  # when no live replica reports max_running

    def pool(self, name: str) -> PoolPolicy:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


@dataclass(frozen=True)
class LoadReport:
    """One replica's load report (its registry hash in Redis)."""

    replica_id: str
    pool: str
    running: int
    waiting: int
    max_running: int
    kv_usage: float
    heartbeat_ts: float


@dataclass(frozen=True)
class QueueBacklog:
    undelivered: int = 0  # entries no replica has taken yet
    oldest_wait_s: float = 0.0  # age of the oldest of them (0 when none)

    def __add__(self, other: QueueBacklog) -> QueueBacklog:
        return QueueBacklog(
            self.undelivered + other.undelivered, max(self.oldest_wait_s, other.oldest_wait_s)
        )


@dataclass(frozen=True)
class Signals:
    now_s: float
    backlog_by_pool: Mapping[str, QueueBacklog]  # streams of each pool's live replicas
    shared_backlog: QueueBacklog  # overflow lanes + streams of replicas that are gone
    replicas: tuple[LoadReport, ...]


@dataclass(frozen=True)
class AutoscaleState:
    """What one round leaves for the next (all times in the signals' clock, seconds)."""

    started_s: float
    last_scale_up_s: Mapping[str, float] = field(default_factory=dict)
    last_scale_down_s: Mapping[str, float] = field(default_factory=dict)
    unready_since_s: Mapping[str, float] = field(default_factory=dict)
    # Per pool: (time, replicas it would keep) of the rounds within the last scale-down
    # cool-down; a scale-down goes to the peak of this window, never lower.
    keep_history: Mapping[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    pool: str
    current: int
    desired: int
    reason: str

    @property
    def changed(self) -> bool:
        return self.desired != self.current


@dataclass
class _PoolView:
    """Working numbers of one pool during a round."""

    policy: PoolPolicy
    current: int
    live: int
    slots: int
    load: int  # running + waiting over live replicas
    backlog: QueueBacklog
    unavailable: bool
    desired: int = 0
    keep: int = 0  # the floor of a scale-down (desired under the tolerance)
    reason: str = "steady"


def decide(
    policy: AutoscalePolicy,
    signals: Signals,
    current: Mapping[str, int],
    state: AutoscaleState,
) -> tuple[list[Decision], AutoscaleState]:
    """One round: the desired replicas per pool, and the next state."""
    now = signals.now_s
    unready = _track_unready(policy, signals, current, state)
    views = [_pool_view(policy, p, signals, current, unready, now) for p in policy.pools]
    backlog = signals.shared_backlog
    for view in views:
        backlog = backlog + view.backlog
    demand = sum(v.load for v in views) + backlog.undelivered
    # What each pool would keep with `scale_down_tolerance` more demand: scale-downs go no
    # lower, so demand that wobbles around a step does not flap the replica count.
    _allocate(policy, views, demand * (1 + policy.scale_down_tolerance))
    for view in views:
        view.keep = view.desired
    _allocate(policy, views, demand)
    if backlog.oldest_wait_s > policy.queue_wait_slo_s and _up_cooled(policy, state, now):
        _add_for_late_backlog(policy, views, backlog)
    next_state = replace(state, unready_since_s=unready)
    decisions = []
    for view in views:
        next_state = _apply_cooldowns(policy, view, next_state, now)
        decisions.append(Decision(view.policy.name, view.current, view.desired, view.reason))
    return decisions, next_state


def _live_replicas(policy: AutoscalePolicy, signals: Signals, pool: str) -> list[LoadReport]:
    return [
        r
        for r in signals.replicas
        if r.pool == pool and signals.now_s - r.heartbeat_ts <= policy.heartbeat_stale_s
    ]


def _track_unready(
    policy: AutoscalePolicy, signals: Signals, current: Mapping[str, int], state: AutoscaleState
) -> dict[str, float]:
    """Since when each pool has had fewer live replicas than Kubernetes was asked for."""
    unready = {}
    for pool in policy.pools:
        live = len(_live_replicas(policy, signals, pool.name))
        if current.get(pool.name, 0) > live:
            unready[pool.name] = state.unready_since_s.get(pool.name, signals.now_s)
    return unready


def _pool_view(
    policy: AutoscalePolicy,
    pool: PoolPolicy,
    signals: Signals,
    current: Mapping[str, int],
    unready: Mapping[str, float],
    now: float,
) -> _PoolView:
    live = _live_replicas(policy, signals, pool.name)
    reported = [r.max_running for r in live if r.max_running > 0]
    slots = round(sum(reported) / len(reported)) if reported else policy.default_slots_per_replica
    since = unready.get(pool.name)
    return _PoolView(
        policy=pool,
        current=current.get(pool.name, pool.min_replicas),
        live=len(live),
        slots=max(1, slots),
        load=sum(r.running + r.waiting for r in live),
        backlog=signals.backlog_by_pool.get(pool.name, QueueBacklog()),
        unavailable=since is not None and now - since >= policy.startup_grace_s,
    )


def _preference(policy: AutoscalePolicy, views: list[_PoolView]) -> list[_PoolView]:
    """Pools that can take more replicas, best first: cheapest among those meeting the TTFT
    SLO unqueued, then the fastest of the rest."""
    usable = [v for v in views if not v.unavailable]
    meets = [v for v in usable if v.policy.base_ttft_s <= policy.ttft_slo_s]
    too_slow = [v for v in usable if v.policy.base_ttft_s > policy.ttft_slo_s]
    meets.sort(key=lambda v: (v.policy.cost_per_replica_hour, v.policy.base_ttft_s))
    too_slow.sort(key=lambda v: (v.policy.base_ttft_s, v.policy.cost_per_replica_hour))
    return meets + too_slow


def _capacity(policy: AutoscalePolicy, view: _PoolView, replicas: int) -> float:
    return replicas * view.slots * policy.target_utilization


def _allocate(policy: AutoscalePolicy, views: list[_PoolView], demand: float) -> None:
    """Each pool's share of the replicas that carry `demand`, cheapest pools first."""
    remaining = float(demand)
    for view in views:
        if view.unavailable:
            view.desired = view.current
            view.reason = f"out of capacity: {view.current - view.live} replicas unready"
            remaining -= _capacity(policy, view, view.live)
        else:
            view.desired, view.reason = view.policy.min_replicas, "min_replicas"
            remaining -= _capacity(policy, view, view.desired)
    for view in _preference(policy, views):
        if remaining <= 0:
            return
        per_replica = _capacity(policy, view, 1)
        add = min(view.policy.max_replicas - view.desired, math.ceil(remaining / per_replica))
        if add > 0:
            view.desired += add
            view.reason = f"demand {demand:.0f} requests"
            remaining -= add * per_replica


def _up_cooled(policy: AutoscalePolicy, state: AutoscaleState, now: float) -> bool:
    """No pool scaled up within the scale-up cool-down (new replicas may still be starting)."""
    return all(now - t >= policy.scale_up_cooldown_s for t in state.last_scale_up_s.values())


def _add_for_late_backlog(
    policy: AutoscalePolicy, views: list[_PoolView], backlog: QueueBacklog
) -> None:
    """Requests wait past the SLO: replicas for the whole backlog on top of what runs now,
    in pools whose replicas all came up (a pool still starting pods, or failing to, would
    only delay them further)."""
    remaining = float(backlog.undelivered)
    reason = f"queue wait {backlog.oldest_wait_s:.1f}s over SLO, backlog {backlog.undelivered}"
    ready = [v for v in _preference(policy, views) if v.live >= v.current]
    for view in ready:
        room = view.policy.max_replicas - view.current
        if room <= 0:
            continue
        add = min(room, max(1, math.ceil(remaining / _capacity(policy, view, 1))))
        view.desired = max(view.desired, view.current + add)
        view.reason = reason
        remaining -= _capacity(policy, view, add)
        if remaining <= 0:
            return


def _apply_cooldowns(
    policy: AutoscalePolicy, view: _PoolView, state: AutoscaleState, now: float
) -> AutoscaleState:
    """Hold scale-downs until demand has stayed lower for a whole cool-down window."""
    name, pool = view.policy.name, view.policy
    window_start = now - policy.scale_down_cooldown_s
    history = tuple(e for e in state.keep_history.get(name, ()) if e[0] > window_start)
    history += ((now, view.keep),)
    ups, downs = dict(state.last_scale_up_s), dict(state.last_scale_down_s)
    if view.current < pool.min_replicas:
        view.desired, view.reason = max(view.desired, pool.min_replicas), "below min_replicas"
    if view.desired < view.current:
        last_change = max(ups.get(name, state.started_s), downs.get(name, state.started_s))
        target = max(max(keep for _, keep in history), pool.min_replicas)
        if now - last_change >= policy.scale_down_cooldown_s and target < view.current:
            view.desired = target
            view.reason = f"demand lower for {policy.scale_down_cooldown_s:.0f}s"
        else:
            view.desired = view.current
            view.reason = "holding: scale-down cool-down"
    if view.desired > pool.max_replicas:
        view.desired, view.reason = pool.max_replicas, "above max_replicas"
    if view.desired > view.current:
        ups[name] = now
    elif view.desired < view.current:
        downs[name] = now
    return replace(
        state,
        keep_history={**state.keep_history, name: history},
        last_scale_up_s=ups,
        last_scale_down_s=downs,
    )
