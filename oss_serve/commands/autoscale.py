"""`oss-serve autoscale`: scale replica groups per GPU pool on queue depth."""

from __future__ import annotations

import typer

from oss_serve.commands._common import not_implemented


def autoscale() -> None:
    """Read queue depth and load from Redis and scale each pool's replicas in Kubernetes."""
    not_implemented("autoscale", "Helm chart for Kubernetes GPU node pools, and autoscaling")


def register(app: typer.Typer) -> None:
    app.command("autoscale")(autoscale)
