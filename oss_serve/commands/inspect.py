"""`oss-serve inspect`: parameter counts and checkpoint bytes by component."""

from __future__ import annotations

from typing import Annotated

import typer

from oss_serve.commands._common import fail


def inspect(
    model: Annotated[
        str,
        typer.Option("--model", help="Preset (gpt-oss-20b, gpt-oss-120b) or checkpoint folder."),
    ] = "gpt-oss-20b",
    weights_format: Annotated[
        str,
        typer.Option(
            "--weights-format", help="auto (read the checkpoint), mxfp4, bf16 or fp32 for bytes."
        ),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Count parameters (total and active per token) and bytes by component."""
    from oss_serve.workers.model.inspect import report_for  # torch only when this command runs

    if weights_format not in ("auto", "mxfp4", "bf16", "fp32"):
        fail(f"--weights-format must be auto, mxfp4, bf16 or fp32, not {weights_format!r}")
    try:
        report = report_for(model, weights_format)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if as_json:
        typer.echo(report.to_json())
        return
    typer.echo(f"{report.model} ({report.weights_format} storage)")
    typer.echo(f"{'component':<12} {'params':>16} {'active':>16} {'GiB':>9}")
    for name, count in report.components.items():
        typer.echo(
            f"{name:<12} {count.params:>16,} {count.active_params:>16,} {count.bytes / 2**30:>9.3f}"
        )
    typer.echo(
        f"{'total':<12} {report.total_params:>16,} {report.active_params:>16,} "
        f"{report.total_bytes / 2**30:>9.3f}"
    )


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
