"""Training progress: a rich bar on a terminal, a log line every tenth of the run elsewhere."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from oss_serve.common.logging import get_logger
from oss_serve.workers.training.trainer import ProgressFn

log = get_logger(__name__)


@contextlib.contextmanager
def training_progress(description: str, show_bar: bool | None = None) -> Iterator[ProgressFn]:
    """Yield a ProgressFn. show_bar None = a bar only when stderr is a terminal."""
    console = Console(file=sys.stderr)
    if show_bar is None:
        show_bar = console.is_terminal
    if not show_bar:
        yield _log_lines(description)
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task(description, total=None, loss=float("nan"))

    def update(step: int, total: int, loss: float) -> None:
        bar.update(task, completed=step, total=total, loss=loss)

    with bar:
        yield update


def _log_lines(description: str) -> ProgressFn:
    last_tenth = [-1]

    def update(step: int, total: int, loss: float) -> None:
        tenth = step * 10 // max(total, 1)
        if tenth != last_tenth[0]:
            last_tenth[0] = tenth
            log.info(description, step=step, total_steps=total, loss=round(loss, 4))

    return update
