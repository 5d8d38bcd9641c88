"""Pieces every subcommand shares: the --config option, settings + logging set-up, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from oss_serve.common.logging import configure_logging
from oss_serve.common.settings import Settings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="YAML or TOML settings file (flags > env OSS_SERVE_* > file)."),
]


def settings_from_flags(config: Path | None, **flags: Any) -> Settings:
    """Load settings with flag precedence and configure logging from them."""
    try:
        settings = load_settings(config, **flags)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    configure_logging(settings.log_level, settings.log_format)
    return settings


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error and exit with `code` (2 = usage / not available)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)
