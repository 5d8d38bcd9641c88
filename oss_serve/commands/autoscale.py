"""`oss-serve autoscale`: scale replica groups per GPU pool on queue depth."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from oss_serve.commands._common import ConfigOption, fail, settings_from_flags

PolicyOption = Annotated[
    Path,
    typer.Option("--policy", help="Pools, SLO targets and workload (the chart's policy.yaml)."),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print each round's decisions; change nothing.")
]
OnceOption = Annotated[bool, typer.Option("--once", help="Run one round and exit.")]
MetricsPortOption = Annotated[
    int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics on this port.")
]
HealthFileOption = Annotated[
    Path | None,
    typer.Option("--health-file", help="Touched after every round (for a liveness probe)."),
]


def autoscale(
    policy: PolicyOption,
    dry_run: DryRunOption = False,
    once: OnceOption = False,
    health_file: HealthFileOption = None,
    metrics_port: MetricsPortOption = None,
    config: ConfigOption = None,
) -> None:
    """Read queue depth and load from Redis and scale each pool's replicas in Kubernetes."""
    import redis

    from oss_serve.cluster.autoscale.autoscaler import (
        Autoscaler,
        PolicyFileError,
        decisions_json,
        load_config,
        make_scaler,
    )
    from oss_serve.cluster.autoscale.metrics import AutoscalerMetrics
    from oss_serve.streams.keys import RedisKeys
    from oss_serve.streams.redis_client import connect_from

    settings = settings_from_flags(config)
    if settings.redis_url is None:
        fail("no Redis to read: set OSS_SERVE_REDIS_URL (or redis_url in --config)")
    try:
        autoscaler_config = load_config(policy)
    except PolicyFileError as err:
        fail(str(err))
    client = connect_from(settings, blocking=True, socket_timeout_s=10)
    metrics = AutoscalerMetrics()
    if metrics_port is not None:
        metrics.serve(metrics_port)
    autoscaler = Autoscaler(
        autoscaler_config,
        client,
        RedisKeys(settings.redis_namespace),
        make_scaler(autoscaler_config, dry_run=dry_run),
        dry_run=dry_run,
        report=(lambda decisions: typer.echo(decisions_json(decisions))) if dry_run else None,
        metrics=metrics,
    )
    if once:
        try:
            autoscaler.step()
        except redis.RedisError as err:
            fail(f"redis: {type(err).__name__}: {err}", code=1)
        return
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    autoscaler.run(stop, health_file)


def register(app: typer.Typer) -> None:
    app.command("autoscale")(autoscale)
