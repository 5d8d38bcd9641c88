"""`oss-serve up`: the whole stack on one machine (the README's first command, `make up`)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer

import oss_serve.tools
from oss_serve.commands._common import (
    AdminApiKeyOption,
    AllowUnsandboxedPythonOption,
    BrowserDocsDirOption,
    BrowserSearchUrlOption,
    ConfigOption,
    EnableLoraOption,
    LoraModulesOption,
    MaxCpuLorasOption,
    MaxLoraRankOption,
    MaxLorasOption,
    MaxToolCallsOption,
    McpAllowedUrlsOption,
    ToolsOption,
    fail,
    lora_flags,
    settings_from_flags,
    tool_flags,
)
from oss_serve.common.logging import configure_logging
from oss_serve.common.settings import Settings

if TYPE_CHECKING:
    from oss_serve.cluster.launch.console import UpConsole

DEMO_MODEL_NAME = "oss-serve-demo"
DEMO_DOCS_DIR = Path(oss_serve.tools.__file__).parent / "demo_docs"  # the browser's demo folder


def up(
    model: str | None = typer.Option(
        None, "--model", help="Checkpoint folder or preset; default: the embedded demo model."
    ),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Model replicas to start."),
    tensor_parallel_size: int | None = typer.Option(None, "--tensor-parallel-size", "-tp", min=1),
    expert_parallel_size: int | None = typer.Option(None, "--expert-parallel-size", "-ep", min=1),
    http_port: int | None = typer.Option(None, "--http-port"),
    grpc_port: int | None = typer.Option(None, "--grpc-port"),
    link_port: int | None = typer.Option(
        None, "--link-port", help="Replica link port (default: --grpc-port + 1)."
    ),
    redis_url: str | None = typer.Option(
        None, "--redis-url", help="Use this Redis instead of starting one."
    ),
    api_key: str | None = typer.Option(None, "--api-key", help="API key clients must send."),
    enable_lora: EnableLoraOption = None,
    lora_modules: LoraModulesOption = None,
    max_loras: MaxLorasOption = None,
    max_lora_rank: MaxLoraRankOption = None,
    max_cpu_loras: MaxCpuLorasOption = None,
    admin_api_key: AdminApiKeyOption = None,
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", help="PEM certificate: TLS on the router's ports (and the link)."
    ),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM key of --tls-cert."),
    tls_ca: Path | None = typer.Option(
        None, "--tls-ca", help="PEM CA: the link is mTLS, replicas present --tls-cert."
    ),
    tools: ToolsOption = None,
    browser_docs_dir: BrowserDocsDirOption = None,
    browser_search_url: BrowserSearchUrlOption = None,
    mcp_allowed_urls: McpAllowedUrlsOption = None,
    allow_unsandboxed_python: AllowUnsandboxedPythonOption = None,
    max_tool_calls: MaxToolCallsOption = None,
    config: ConfigOption = None,
) -> None:
    """Start Redis, a local Ray runtime, the replicas and a router; Ctrl-C stops them all."""
    from oss_serve.cluster.launch.console import UpConsole
    from oss_serve.cluster.launch.launcher import Launcher, LaunchError, check_ports, plan_launch

    settings = settings_from_flags(
        config,
        model=model,
        tensor_parallel_size=tensor_parallel_size,
        expert_parallel_size=expert_parallel_size,
        http_port=http_port,
        grpc_port=grpc_port,
        link_port=link_port,
        redis_url=redis_url,
        api_key=api_key,
        admin_api_key=admin_api_key,
        **lora_flags(enable_lora, lora_modules, max_loras, max_lora_rank, max_cpu_loras),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        **tool_flags(
            tools,
            browser_docs_dir,
            browser_search_url,
            mcp_allowed_urls,
            allow_unsandboxed_python,
            max_tool_calls,
        ),
    )
    settings, demo_mcp_server = _with_demo_tools(settings)
    if "log_level" not in settings.model_fields_set:
        # the terminal shows progress lines and the banner; logs only when something is wrong
        settings = settings.model_copy(update={"log_level": "warning"})
        configure_logging(settings.log_level, settings.log_format)
    console = UpConsole()
    try:
        check_ports(settings)  # before the demo model, which may train for minutes
        demo_model = _demo_model(settings.cache_dir, console) if settings.model is None else None
        plan = plan_launch(
            settings,
            replicas,
            demo_model=demo_model,
            demo_name=DEMO_MODEL_NAME,
            demo_mcp_server=demo_mcp_server,
        )
        code = asyncio.run(Launcher(plan, console).run())
    except LaunchError as err:
        fail(str(err), code=1)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        code = 130
    raise typer.Exit(code)


def _with_demo_tools(settings: Settings) -> tuple[Settings, bool]:
    """Serving the demo model, and unless --tools (or OSS_SERVE_TOOLS) says otherwise, `up`
    runs python, a browser over the bundled docs and the demo MCP server (the tools the demo
    model learnt); the flag says whether to start that server."""
    if "tools" in settings.model_fields_set or settings.model is not None:
        return settings, False
    tools = ["browser", "mcp"]
    problem = _python_sandbox_problem(settings)
    if problem is None or settings.allow_unsandboxed_python:
        tools.append("python")
    else:
        typer.secho(f"note: the python tool is off ({problem})", err=True)
    update: dict[str, object] = {"tools": tools}
    if settings.browser_docs_dir is None and settings.browser_search_url is None:
        update["browser_docs_dir"] = DEMO_DOCS_DIR
    return settings.model_copy(update=update), True


def _python_sandbox_problem(settings: Settings) -> str | None:
    """Why python cannot run sandboxed here, or None when bubblewrap works."""
    from oss_serve.tools.python.sandbox import SandboxLimits, find_bwrap, probe_bwrap

    bwrap = find_bwrap()
    if bwrap is None:
        return "bubblewrap is not installed; --allow-unsandboxed-python runs it unsandboxed"
    limits = SandboxLimits(
        cell_timeout_s=settings.python_timeout_s, memory_mb=settings.python_memory_mb
    )
    return probe_bwrap(bwrap, limits)


def _demo_model(cache_dir: Path, console: UpConsole) -> Path:
    """The embedded demo model's folder (trained on first run in a child process, then cached)."""
    from oss_serve.cluster.launch.demo_model_process import (
        DemoModelError,
        ensure_demo_model_in_child,
    )

    console.note("demo model: looking in the cache (the first run trains it: a few minutes)")
    with tempfile.TemporaryDirectory(prefix="oss-serve-up-") as scratch:
        try:
            folder = ensure_demo_model_in_child(cache_dir, Path(scratch) / "demo-model-path")
        except DemoModelError as err:
            fail(str(err), code=1)
    console.ready("demo model", str(folder))
    return folder


def register(app: typer.Typer) -> None:
    app.command("up")(up)
