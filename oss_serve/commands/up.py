"""`oss-serve up`: the whole stack on one machine (issue "`oss-serve up`")."""

from __future__ import annotations

import typer

from oss_serve.commands._common import ConfigOption, not_implemented


def up(
    model: str | None = typer.Option(
        None, "--model", help="Checkpoint folder or preset; default: the embedded demo model."
    ),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Model replicas to start."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", "-tp", min=1),
    expert_parallel_size: int = typer.Option(1, "--expert-parallel-size", "-ep", min=1),
    http_port: int | None = typer.Option(None, "--http-port"),
    grpc_port: int | None = typer.Option(None, "--grpc-port"),
    redis_url: str | None = typer.Option(
        None, "--redis-url", help="Use this Redis instead of starting one."
    ),
    api_key: str | None = typer.Option(None, "--api-key", help="API key clients must send."),
    config: ConfigOption = None,
) -> None:
    """Start Redis, a local Ray runtime, the replicas and a router; Ctrl-C stops them all."""
    not_implemented("up", "`oss-serve up`: the whole cluster on one machine")


def register(app: typer.Typer) -> None:
    app.command("up")(up)
