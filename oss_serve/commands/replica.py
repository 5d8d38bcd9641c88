"""`oss-serve replica`: one model replica (Ray actors) pulling from its Redis stream."""

from __future__ import annotations

import typer

from oss_serve.commands._common import ConfigOption, not_implemented


def replica(config: ConfigOption = None) -> None:
    """Run a model replica that serves requests routed to it through Redis."""
    not_implemented("replica", "Cluster: a model replica as Ray actors")


def register(app: typer.Typer) -> None:
    app.command("replica")(replica)
