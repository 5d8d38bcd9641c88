"""The `oss-serve` command line: a Typer app assembled from oss_serve.commands.*."""

from __future__ import annotations

import importlib
import pkgutil

import typer

from oss_serve import __version__, commands
from oss_serve.common.vocab import VocabularyUnavailableError

app = typer.Typer(
    name="oss-serve",
    help="Serve gpt-oss-20b / gpt-oss-120b across GPUs: run the stack, benchmark it, plan capacity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"oss-serve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Serve gpt-oss-20b / gpt-oss-120b across GPUs: run the stack, benchmark it, plan capacity."""


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(app)


_register_commands()


def main() -> None:
    try:
        app()
    except VocabularyUnavailableError as err:  # any command may need the tokenizer first
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
