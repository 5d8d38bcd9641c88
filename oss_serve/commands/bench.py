"""`oss-serve bench`: load generator for any OpenAI-compatible endpoint."""

from __future__ import annotations

import typer

from oss_serve.commands._common import not_implemented


def bench() -> None:
    """Measure TTFT, TPOT, ITL, throughput and goodput of an OpenAI-compatible endpoint."""
    not_implemented("bench", "Capacity benchmarking: a load generator and a planner")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
