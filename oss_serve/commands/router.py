"""`oss-serve router`: one router process (HTTP + gRPC), as Kubernetes runs it."""

from __future__ import annotations

import typer

from oss_serve.commands._common import ConfigOption, not_implemented


def router(config: ConfigOption = None) -> None:
    """Run the router: OpenAI HTTP API and gRPC API in front of the Redis queues."""
    not_implemented("router", "Router: gRPC API, Redis request queues, prefix-cache-aware routing")


def register(app: typer.Typer) -> None:
    app.command("router")(router)
