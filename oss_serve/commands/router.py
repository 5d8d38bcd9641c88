"""`oss-serve router`: one router process (gRPC + OpenAI HTTP APIs, replica links), as Kubernetes runs it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from oss_serve.commands._common import (
    AdminApiKeyOption,
    AllowUnsandboxedPythonOption,
    BrowserDocsDirOption,
    BrowserSearchUrlOption,
    ConfigOption,
    MaxToolCallsOption,
    McpAllowedUrlsOption,
    ToolsOption,
    fail,
    settings_from_flags,
    tool_flags,
)


def router(
    config: ConfigOption = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="redis://[:password@]host:port/db")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on.")] = None,
    grpc_port: Annotated[
        int | None, typer.Option("--grpc-port", help="gRPC port (0 = any free port).")
    ] = None,
    link_port: Annotated[
        int | None,
        typer.Option(
            "--link-port",
            help="Replica link port, apart from the public gRPC API (default: --grpc-port + 1).",
        ),
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--http-port", help="OpenAI HTTP API port (0 = any free port).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", help="Accept this key (besides `oss-serve keys`); required then."
        ),
    ] = None,
    advertise_host: Annotated[
        str | None, typer.Option("--advertise-host", help="Host replicas use to reach this router.")
    ] = None,
    routing_policy: Annotated[
        str | None,
        typer.Option("--routing-policy", help="round_robin, least_load or prefix_aware."),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="Redis key namespace.")
    ] = None,
    max_queue_wait_s: Annotated[
        float | None,
        typer.Option("--max-queue-wait-s", help="Refuse (429) beyond this estimated wait."),
    ] = None,
    max_queued_per_replica: Annotated[
        int | None,
        typer.Option("--max-queued-per-replica", help="Refuse (429) beyond this backlog."),
    ] = None,
    admin_api_key: AdminApiKeyOption = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", help="PEM certificate chain: TLS on every port of the router."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="PEM key of --tls-cert.")
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca", help="PEM CA: replicas must present certificates it signed (mTLS)."
        ),
    ] = None,
    tools: ToolsOption = None,
    browser_docs_dir: BrowserDocsDirOption = None,
    browser_search_url: BrowserSearchUrlOption = None,
    mcp_allowed_urls: McpAllowedUrlsOption = None,
    allow_unsandboxed_python: AllowUnsandboxedPythonOption = None,
    max_tool_calls: MaxToolCallsOption = None,
) -> None:
    """Run the router: the gRPC API in front of the Redis queues, routing by prefix cache and load."""
    from oss_serve.router.server import run_router

    settings = settings_from_flags(
        config,
        redis_url=redis_url,
        host=host,
        grpc_port=grpc_port,
        link_port=link_port,
        http_port=http_port,
        api_key=api_key,
        advertise_host=advertise_host,
        routing_policy=routing_policy,
        redis_namespace=namespace,
        max_queue_wait_s=max_queue_wait_s,
        max_queued_per_replica=max_queued_per_replica,
        admin_api_key=admin_api_key,
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
    try:
        asyncio.run(run_router(settings))
    except (ValueError, OSError) as err:
        fail(str(err))


def register(app: typer.Typer) -> None:
    app.command("router")(router)
