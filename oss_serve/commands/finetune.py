"""`oss-serve finetune`: train on harmony-rendered conversations."""

from __future__ import annotations

import typer

from oss_serve.commands._common import not_implemented


def finetune() -> None:
    """Fine-tune (full or LoRA) on a JSONL of chat conversations; writes an HF checkpoint."""
    not_implemented("finetune", "`oss-serve up`: the whole cluster on one machine")


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
