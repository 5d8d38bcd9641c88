"""A live progress bar for bench runs (rich, on stderr); silent when stderr is not a terminal."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from oss_serve.benchmarks.loadgen import Budget, LoadPoint
from oss_serve.benchmarks.metrics import RequestRecord


class BenchProgress:
    """One bar per load point: requests done (or seconds elapsed), failures, output tokens/s."""

    def __init__(self, budget: Budget, enabled: bool = True) -> None:
        console = Console(stderr=True)
        self._budget = budget
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"),
            TextColumn("{task.fields[tokens_per_s]:.0f} out tok/s"),
            TimeElapsedColumn(),
            console=console,
            disable=not (enabled and console.is_terminal),
        )
        self._task: TaskID | None = None
        self._failed = 0
        self._output_tokens = 0
        self._started_s = time.perf_counter()

    def __enter__(self) -> BenchProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def start_point(self, point: LoadPoint) -> None:
        """A new bar for the next load point of a sweep."""
        total = self._budget.num_requests
        self._failed = 0
        self._output_tokens = 0
        self._started_s = time.perf_counter()
        self._task = self._progress.add_task(point.label, total=total, failed=0, tokens_per_s=0.0)

    def request_done(self, record: RequestRecord) -> None:
        if self._task is None:
            return
        if record.ok:
            self._output_tokens += record.output_tokens
        else:
            self._failed += 1
        elapsed_s = max(time.perf_counter() - self._started_s, 1e-9)
        self._progress.update(
            self._task,
            advance=1,
            failed=self._failed,
            tokens_per_s=self._output_tokens / elapsed_s,
        )
