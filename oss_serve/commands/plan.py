"""`oss-serve plan`: capacity planning for GPU pools."""

from __future__ import annotations

import typer

from oss_serve.commands._common import not_implemented


def plan() -> None:
    """Predict memory, max concurrency, speed and cost of a deployment on a GPU type."""
    not_implemented("plan", "Capacity benchmarking: a load generator and a planner")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
