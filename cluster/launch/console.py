"""What `oss-serve up` shows on the terminal: a line per component ready, weight bars while
the replicas load, then the URLs and ready-to-paste examples.

On a terminal the bars are rich progress bars; otherwise (a pipe, a log file, a test)
each replica prints one line when its weights are in, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn


@dataclass(frozen=True)
class Endpoints:
    """Where the started stack listens, and what to send it."""

    http_url: str  # http://host:port
    grpc_address: str  # host:port
    redis_url: str  # without any password
    model: str
    api_key: str | None
    api_key_generated: bool
    replicas: int
    python: str  # the interpreter that has the openai package
    link_address: str = ""  # host:port of the replica link
    cluster_token: str | None = None  # only when generated for this run (printed once)
    tools: str = ""  # the server-side tools the Responses API may run, as the banner shows them


class WeightBars:
    """One bar per replica, fed with (done_bytes, total_bytes) polled from the actors."""

    def __init__(self, labels: Sequence[str], console: Console, interactive: bool) -> None:
        self._labels = list(labels)
        self._console = console
        self._done_reported: set[int] = set()
        self._progress: Progress | None = None
        self._tasks: list[TaskID] = []
        if interactive:
            self._progress = Progress(
                TextColumn("  {task.description:<12}"),
                BarColumn(),
                DownloadColumn(),
                console=console,
                transient=False,
            )
            self._tasks = [self._progress.add_task(f"{label} weights") for label in labels]

    def update(self, index: int, done_bytes: int, total_bytes: int) -> None:
        if total_bytes <= 0:
            return
        if self._progress is not None:
            self._progress.update(self._tasks[index], completed=done_bytes, total=total_bytes)
        elif done_bytes >= total_bytes and index not in self._done_reported:
            self._done_reported.add(index)
            self._console.print(
                f"  {self._labels[index]}: weights loaded ({total_bytes / 2**20:.1f} MiB)"
            )

    def __enter__(self) -> WeightBars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


class UpConsole:
    def __init__(self, stream: TextIO | None = None) -> None:
        stream = stream or sys.stdout
        self.interactive = stream.isatty()
        self._console = Console(file=stream, highlight=False, soft_wrap=True)
        self._started = time.monotonic()

    def ready(self, component: str, detail: str = "") -> None:
        """One line when a component is up, with the seconds since `up` started."""
        elapsed_s = time.monotonic() - self._started
        detail = f"  {detail}" if detail else ""
        self._console.print(f"[green]✓[/green] {component}{detail}  [dim]({elapsed_s:.1f}s)[/dim]")

    def note(self, text: str) -> None:
        self._console.print(f"  {text}")

    @contextmanager
    def weight_bars(self, labels: Sequence[str]) -> Iterator[WeightBars]:
        with WeightBars(labels, self._console, self.interactive) as bars:
            yield bars

    def banner(self, endpoints: Endpoints) -> None:
        self._console.print(banner_text(endpoints), markup=False)

    def stopping(self, what: str) -> None:
        elapsed_s = time.monotonic() - self._started
        self._console.print(f"  stopping {what} ...  [dim]({elapsed_s:.1f}s)[/dim]")


def banner_text(e: Endpoints) -> str:
    """The URLs, the key (printed here only) and examples that work as pasted."""
    if e.api_key is None:
        key_line = "none (pass --api-key KEY to require one)"
    elif e.api_key_generated:
        key_line = f"export OSS_SERVE_API_KEY={e.api_key}   # generated for this run; --api-key KEY chooses one"
    else:  # the user's own secret (flag, env or file): not echoed
        key_line = "yours (--api-key): export OSS_SERVE_API_KEY=<it> for the examples below"
    auth = ' -H "Authorization: Bearer $OSS_SERVE_API_KEY"' if e.api_key else ""
    client_key = 'os.environ["OSS_SERVE_API_KEY"]' if e.api_key else '"none"'
    replicas = f"{e.replicas} replica" + ("s" if e.replicas != 1 else "")
    token_line = (
        f"export OSS_SERVE_CLUSTER_TOKEN={e.cluster_token}   # generated: routers and replicas "
        "that join this stack need it"
        if e.cluster_token
        else "yours (OSS_SERVE_CLUSTER_TOKEN)"
    )
    return f"""
oss-serve is up: model {e.model!r}, {replicas}
  OpenAI API  {e.http_url}/v1
  gRPC        {e.grpc_address}   (oss_serve.v1.Inference)
  metrics     {e.http_url}/metrics
  redis       {e.redis_url}
  API key     {key_line}
  replica link {e.link_address}   cluster token: {token_line}
  tools       {e.tools or "none (--tools python,browser,mcp)"}

Try it from another terminal (paste the export line first):

curl -s {e.http_url}/v1/chat/completions{auth} \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{e.model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

{e.python} - <<'EOF'
import os
from openai import OpenAI
client = OpenAI(base_url="{e.http_url}/v1", api_key={client_key})
reply = client.chat.completions.create(
    model="{e.model}", messages=[{{"role": "user", "content": "What is 7 + 5?"}}],
    reasoning_effort="low", temperature=0)
print("reasoning:", getattr(reply.choices[0].message, "reasoning", None))
print("answer:", reply.choices[0].message.content)
EOF

Ctrl-C stops everything.
"""
