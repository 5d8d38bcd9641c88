"""`oss-serve inspect`: parameter counts and checkpoint bytes by component."""

from __future__ import annotations

import typer

from oss_serve.commands._common import not_implemented


def inspect() -> None:
    """Count parameters (total and active per token) and bytes by component."""
    not_implemented("inspect", "The gpt-oss model")


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
