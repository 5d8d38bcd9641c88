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


# vLLM's LoRA flags, shared by `up` and `replica`
EnableLoraOption = Annotated[
    bool | None,
    typer.Option("--enable-lora", help="Serve LoRA adapters (PEFT folders) on this model."),
]
LoraModulesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--lora-modules",
        help='Adapters to serve from the start: name=path or {"name": ..., "path": ...} '
        "(repeat the flag, or several separated by spaces in one value).",
    ),
]
MaxLorasOption = Annotated[
    int | None,
    typer.Option("--max-loras", min=1, help="Adapters on the device (and in one step) at most."),
]
MaxLoraRankOption = Annotated[int | None, typer.Option("--max-lora-rank", min=1)]
MaxCpuLorasOption = Annotated[
    int | None,
    typer.Option("--max-cpu-loras", min=1, help="Adapters kept in host memory (LRU)."),
]
AdminApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--admin-api-key", help="Key for POST /v1/load_lora_adapter and /v1/unload_lora_adapter."
    ),
]


def lora_flags(
    enable_lora: bool | None,
    lora_modules: list[str] | None,
    max_loras: int | None,
    max_lora_rank: int | None,
    max_cpu_loras: int | None,
) -> dict[str, Any]:
    """The LoRA flags as settings fields (given ones only); --lora-modules implies LoRA on."""
    return {
        "enable_lora": True if lora_modules else enable_lora,
        "lora_modules": lora_modules or None,
        "max_loras": max_loras,
        "max_lora_rank": max_lora_rank,
        "max_cpu_loras": max_cpu_loras,
    }
