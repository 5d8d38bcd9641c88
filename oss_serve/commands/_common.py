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


# server-side tools, shared by `up` and `router`
ToolsOption = Annotated[
    str | None,
    typer.Option(
        "--tools",
        help="Server-side tools the Responses API (and Chat's server_tools) may use: "
        "python, browser, mcp, comma-separated; 'none' turns them off.",
    ),
]
BrowserDocsDirOption = Annotated[
    Path | None,
    typer.Option("--browser-docs-dir", help="Folder (Markdown, HTML, text) the browser searches."),
]
BrowserSearchUrlOption = Annotated[
    str | None,
    typer.Option(
        "--browser-search-url",
        help="HTTP search API for the browser instead of a folder (key: "
        "OSS_SERVE_BROWSER_SEARCH_API_KEY).",
    ),
]
McpAllowedUrlsOption = Annotated[
    str | None,
    typer.Option(
        "--mcp-allowed-urls",
        help="URL prefixes of the MCP servers requests may name, comma-separated.",
    ),
]
AllowUnsandboxedPythonOption = Annotated[
    bool | None,
    typer.Option(
        "--allow-unsandboxed-python",
        help="Run python without bubblewrap when it is missing (weaker isolation).",
    ),
]
MaxToolCallsOption = Annotated[
    int | None,
    typer.Option("--max-tool-calls", min=0, help="Server-side calls per response by default."),
]


def tool_flags(
    tools: str | None,
    browser_docs_dir: Path | None,
    browser_search_url: str | None,
    mcp_allowed_urls: str | None,
    allow_unsandboxed_python: bool | None,
    max_tool_calls: int | None,
) -> dict[str, Any]:
    """The tool flags as settings fields (given ones only)."""
    return {
        "tools": None if tools is None else _names(tools, none_word="none"),
        "browser_docs_dir": browser_docs_dir,
        "browser_search_url": browser_search_url,
        "mcp_allowed_urls": None if mcp_allowed_urls is None else _names(mcp_allowed_urls),
        "allow_unsandboxed_python": allow_unsandboxed_python,
        "max_tool_calls": max_tool_calls,
    }


def _names(value: str, *, none_word: str | None = None) -> list[str]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    return [] if none_word is not None and names == [none_word] else names
