"""`oss-serve autoscale`: every interval, read Redis, decide per pool, scale in Kubernetes.

The policy file (the chart renders it into a ConfigMap) names the pools with their limits,
costs and unqueued TTFT, the SLO targets and cool-downs, and the workload to scale: a KubeRay
RayCluster (one worker group per pool) or one Deployment per pool. The decision itself is
cluster/autoscale/policy.py (pure); reading Redis is autoscale_signals.py; Kubernetes calls
are autoscale_k8s.py. With dry_run the decisions are printed and nothing is patched.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import redis
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from oss_serve.cluster.autoscale.k8s import (
    DeploymentScaler,
    DryRunScaler,
    RayClusterScaler,
    ReplicaScaler,
    load_kube_config,
)
from oss_serve.cluster.autoscale.metrics import AutoscalerMetrics
from oss_serve.cluster.autoscale.policy import (
    AutoscalePolicy,
    AutoscaleState,
    Decision,
    PoolPolicy,
    decide,
)
from oss_serve.cluster.autoscale.signals import read_signals
from oss_serve.common.health_file import touch
from oss_serve.common.logging import get_logger
from oss_serve.streams.keys import RedisKeys

log = get_logger(__name__)


class PolicyFileError(ValueError):
    """The autoscaler policy file is missing or wrong; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolSpec(_Strict):
    name: str = Field(min_length=1)
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)
    cost_per_replica_hour: float = Field(gt=0)
    base_ttft_s: float = Field(ge=0)
    deployment: str | None = None  # the pool's Deployment (workload Deployment)


class SloSpec(_Strict):
    queue_wait_s: float = Field(gt=0)
    ttft_s: float = Field(gt=0)


class AutoscalerConfig(_Strict):
    namespace: str = "default"
    workload: Literal["RayCluster", "Deployment"] = "RayCluster"
    ray_cluster: str | None = None
    interval_s: float = Field(default=15.0, gt=0)
    slo: SloSpec = SloSpec(queue_wait_s=2.0, ttft_s=3.0)
    target_utilization: float = Field(default=0.8, gt=0, le=1)
    scale_up_cooldown_s: float = Field(default=60.0, ge=0)
    scale_down_cooldown_s: float = Field(default=600.0, ge=0)
    startup_grace_s: float = Field(default=900.0, ge=0)
    pools: list[PoolSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _workload_targets(self) -> AutoscalerConfig:
        if self.workload == "RayCluster" and not self.ray_cluster:
            raise ValueError("ray_cluster: required when workload is RayCluster")
        if self.workload == "Deployment":
            missing = [p.name for p in self.pools if not p.deployment]
            if missing:
                raise ValueError(f"pools {missing}: deployment is required (workload Deployment)")
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pools: names must be unique, got {names}")
        return self

    def policy(self) -> AutoscalePolicy:
        pools = tuple(
            PoolPolicy(
                p.name, p.min_replicas, p.max_replicas, p.cost_per_replica_hour, p.base_ttft_s
            )
            for p in self.pools
        )
        return AutoscalePolicy(
            pools=pools,
            queue_wait_slo_s=self.slo.queue_wait_s,
            ttft_slo_s=self.slo.ttft_s,
            target_utilization=self.target_utilization,
            scale_up_cooldown_s=self.scale_up_cooldown_s,
            scale_down_cooldown_s=self.scale_down_cooldown_s,
            startup_grace_s=self.startup_grace_s,
        )


def load_config(path: Path) -> AutoscalerConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise PolicyFileError(f"policy file {path} does not exist") from err
    except yaml.YAMLError as err:
        raise PolicyFileError(f"policy file {path} is not valid YAML: {err}") from err
    try:
        config = AutoscalerConfig.model_validate(raw or {})
        config.policy()  # PoolPolicy checks min <= max
    except (ValidationError, ValueError) as err:
        raise PolicyFileError(f"policy file {path}: {err}") from err
    return config


def make_scaler(config: AutoscalerConfig, *, dry_run: bool) -> ReplicaScaler:
    """The Kubernetes scaler; a dry run without cluster access simulates one from min_replicas."""
    from kubernetes import client as k8s
    from kubernetes.config import ConfigException

    try:
        api_client = load_kube_config()
    except (ConfigException, FileNotFoundError):
        if not dry_run:
            raise
        log.warning("no Kubernetes access: dry run starts every pool at min_replicas")
        return DryRunScaler({p.name: p.min_replicas for p in config.pools})
    if config.workload == "RayCluster":
        assert config.ray_cluster is not None
        return RayClusterScaler(
            k8s.CustomObjectsApi(api_client), config.namespace, config.ray_cluster
        )
    deployments = {p.name: p.deployment for p in config.pools if p.deployment}
    return DeploymentScaler(k8s.AppsV1Api(api_client), config.namespace, deployments)


class Autoscaler:
    """The control loop around `decide`; `step()` is one round."""

    def __init__(
        self,
        config: AutoscalerConfig,
        redis_client: redis.Redis,
        keys: RedisKeys,
        scaler: ReplicaScaler,
        *,
        dry_run: bool = False,
        report: Callable[[list[Decision]], None] | None = None,
        metrics: AutoscalerMetrics | None = None,
    ) -> None:
        self.config, self.policy = config, config.policy()
        self.redis, self.keys, self.scaler = redis_client, keys, scaler
        self.dry_run = dry_run
        self.report = report
        self.metrics = metrics
        self.state: AutoscaleState | None = None

    def step(self) -> list[Decision]:
        signals = read_signals(self.redis, self.keys)
        if self.state is None:  # a restart holds scale-downs for one cool-down
            self.state = AutoscaleState(started_s=signals.now_s)
        current = self.scaler.current()
        decisions, self.state = decide(self.policy, signals, current, self.state)
        changes = {d.pool: d.desired for d in decisions if d.changed}
        if changes and not self.dry_run:
            self.scaler.apply(changes)
        for d in decisions:
            if d.changed:
                log.info(
                    "scale", pool=d.pool, current=d.current, desired=d.desired, reason=d.reason
                )
        if self.metrics is not None:
            self.metrics.observe(signals, decisions)
        if self.report is not None:
            self.report(decisions)
        return decisions

    def run(self, stop: threading.Event, health_file: Path | None = None) -> None:
        """Rounds every interval until `stop` is set; a failed round is logged and retried."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.step()
                if health_file is not None:
                    touch(health_file)
            except (redis.RedisError, OSError) as err:
                log.warning("autoscaling round failed", error=f"{type(err).__name__}: {err}")
            except Exception as err:  # kubernetes ApiException and the like: keep the loop
                log.error("autoscaling round failed", error=f"{type(err).__name__}: {err}")
            stop.wait(max(0.0, self.config.interval_s - (time.monotonic() - started)))


def decisions_json(decisions: list[Decision]) -> str:
    """One line per round, for --dry-run output."""
    return json.dumps(
        [
            {"pool": d.pool, "current": d.current, "desired": d.desired, "reason": d.reason}
            for d in decisions
        ]
    )
