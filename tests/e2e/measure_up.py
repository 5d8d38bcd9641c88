"""Start-up time and memory of `oss-serve up` (a measurement to run by hand, not a test).

    .venv/bin/python -m tests.e2e.measure_up [--cold] [--output-dir DIR] [-- <up flags>]

Reports seconds to /ready, then RSS and PSS (shared pages counted once, by share) of the
whole process tree per component after a few chat requests, then the seconds SIGTERM takes
to stop everything. `--cold` points the cache at an empty folder, so the demo model is
trained first (the first run on a fresh machine); the training's own figures (steps,
seconds, peak RSS, losses) come from the `finetune.json` it leaves in that cache. The
machine's load average is recorded before and after, since start-up time on a shared
machine depends on what else runs. With `--output-dir` it writes `startup.json`,
`startup.md` and `up-output.txt` (what `up` printed) there.

It lives beside the e2e tests because it drives `up` exactly as they do (`UpProcess`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.e2e.up_process import UpProcess, left_behind

MIB = 2**20


def component(process: psutil.Process) -> str:
    text = " ".join(process.cmdline()) or process.name()
    for marker, label in (
        ("ReplicaHostActor", "replica actor"),
        ("oss_serve.cli up", "oss-serve up (router + driver)"),
        ("redis-server", "redis-server"),
        ("gcs_server", "ray gcs_server"),
        ("raylet", "ray raylet"),
    ):
        if marker in text:
            return label
    return "ray other (dashboard head/agent, monitors, idle workers)"


def memory_by_component(up: UpProcess) -> dict[str, tuple[int, int]]:
    """component -> (RSS bytes, PSS bytes), summed over its processes."""
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for process in up.tree():
        with contextlib.suppress(psutil.Error):
            info = process.memory_full_info()
            totals[component(process)][0] += info.rss
            totals[component(process)][1] += getattr(info, "pss", info.rss)
    return {name: (rss, pss) for name, (rss, pss) in totals.items()}


def chat(up: UpProcess, model: str, requests: int) -> None:
    headers = {"Authorization": f"Bearer {up.api_key()}"}
    for i in range(requests):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"What is {i} + 5?"}],
            "temperature": 0,
            "max_tokens": 64,
        }
        reply = httpx.post(
            f"{up.base_url}/v1/chat/completions", json=body, headers=headers, timeout=120
        )
        reply.raise_for_status()


def demo_training(cache_dir: Path) -> dict[str, Any] | None:
    """What training the demo model measured (its finetune.json), and the checkpoint's size."""
    results = sorted(cache_dir.glob("demo-model/*/finetune.json"))
    if not results:
        return None
    folder = results[0].parent
    document = json.loads(results[0].read_text())
    document.pop("log", None)  # per-step losses: the summary is enough here
    checkpoint = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    return {**document, "checkpoint_bytes": checkpoint}


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
    }


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


class LoadSampler:
    """The 1-minute load average every few seconds while `up` runs (other jobs slow it)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(round(os.getloadavg()[0], 2))
            self._stop.wait(self.interval_s)

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Idempotent: stops sampling (called at /ready, and again on the way out)."""
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        samples = self.samples or [0.0]
        return {
            "interval_s": self.interval_s,
            "mean": round(sum(samples) / len(samples), 2),
            "max": max(samples),
            "samples": self.samples,
        }


def markdown(result: dict[str, Any]) -> str:
    """The human-readable page of one measurement."""
    host = result["machine"]
    during = result["load_average_1min_until_ready"]
    state = "cold: empty cache, the demo model trained first" if result["cold"] else "warm"
    lines = [
        "# `oss-serve up`: start-up time and memory",
        "",
        f"`{result['command']}`",
        "",
        f"Model `{result['model']}`, {state}; "
        f"{host['cpus']} CPUs, {host['memory_bytes'] / 2**30:.0f} GiB; load average "
        f"(1/5/15 min) {'/'.join(map(str, result['load_average_before']))} before, "
        f"{'/'.join(map(str, result['load_average_after']))} after; 1-minute load average "
        f"until `/ready`: mean {during['mean']}, max {during['max']}.",
        "",
        "| step | result |",
        "| --- | ---: |",
        f"| start -> `/ready` | {result['ready_s']:.1f} s |",
    ]
    training = result["demo_training"]
    if training:
        lines += [
            f"| of which training the demo model | {training['total_seconds']:.1f} s "
            f"({training['steps']:,} steps, {training['tokens_seen'] / 1e6:.1f}M tokens) |",
            f"| training process peak RSS | {training['peak_rss_mib']:.0f} MiB |",
            f"| held-out loss | {training['initial_eval_loss']:.2f} -> "
            f"{training['final_eval_loss']:.3f} |",
            f"| demo checkpoint | {training['checkpoint_bytes'] / 1e6:.0f} MB |",
        ]
    lines += [
        f"| {result['chat_requests']} chat requests | {result['chat_s']:.1f} s |",
        f"| SIGTERM -> exit {result['exit_code']} | {result['stop_s']:.1f} s |",
        f"| processes / left behind | {result['processes']} / "
        f"{len(result['left_behind']) or 'none'} |",
        "",
        "Memory after the chat requests (PSS counts a shared page once, split among its users):",
        "",
        "| component | RSS MiB | PSS MiB |",
        "| --- | ---: | ---: |",
    ]
    memory = result["memory_mib"]
    for name, row in sorted(memory.items(), key=lambda item: -item[1]["pss"]):
        if name != "total":
            lines.append(f"| {name} | {row['rss']:.0f} | {row['pss']:.0f} |")
    lines.append(f"| total | {memory['total']['rss']:.0f} | {memory['total']['pss']:.0f} |")
    return "\n".join(lines) + "\n"


def measure(cold: bool, requests: int, up_args: list[str]) -> tuple[dict[str, Any], str]:
    """One `up` run measured from start to stop; returns the result and what `up` printed."""
    folder = Path(tempfile.mkdtemp(prefix="measure-up-"))
    cache_dir = folder / "cache"
    env = {"OSS_SERVE_CACHE_DIR": str(cache_dir)} if cold else {}
    load_before = load_average()
    sampler = LoadSampler().start()
    up = UpProcess(folder, *up_args, env=env).start()
    try:
        ready_s = up.wait_ready(timeout_s=1800)
        sampler.stop()
        headers = {"Authorization": f"Bearer {up.api_key()}"}
        model = httpx.get(f"{up.base_url}/v1/models", headers=headers).json()["data"][0]["id"]
        chat_started = time.monotonic()
        chat(up, model, requests)
        chat_s = time.monotonic() - chat_started
        memory = memory_by_component(up)
        processes = up.tree()
        stop_started = time.monotonic()
        code = up.terminate()
        stop_s = time.monotonic() - stop_started
        leftovers = left_behind(processes)
    finally:
        sampler.stop()
        up.kill_tree()
    total_rss = sum(rss for rss, _ in memory.values())
    total_pss = sum(pss for _, pss in memory.values())
    result = {
        "schema": "oss-serve.startup/v1",
        "command": shlex.join(["python", "-m", "tests.e2e.measure_up", *sys.argv[1:]]),
        "created_unix_s": round(time.time(), 3),
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "load_average_1min_until_ready": sampler.summary(),
        "model": model,
        "cold": cold,
        "up_args": up_args,
        "ready_s": round(ready_s, 2),
        "demo_training": demo_training(cache_dir) if cold else None,
        "chat_requests": requests,
        "chat_s": round(chat_s, 2),
        "exit_code": code,
        "stop_s": round(stop_s, 2),
        "processes": len(processes),
        "left_behind": leftovers,
        "memory_mib": {
            **{
                name: {"rss": round(rss / MIB, 1), "pss": round(pss / MIB, 1)}
                for name, (rss, pss) in memory.items()
            },
            "total": {"rss": round(total_rss / MIB, 1), "pss": round(total_pss / MIB, 1)},
        },
    }
    return result, redact(up.output())


def redact(printed: str) -> str:
    """`up`'s output without the API key and cluster token it generated for this run."""
    for pattern in (r"sk-oss-[A-Za-z0-9_-]+", r"oss-cluster-[A-Za-z0-9_-]+"):
        printed = re.sub(pattern, pattern.split("-[")[0] + "-<redacted>", printed)
    return printed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="empty cache: train the demo model")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--output-dir", type=Path, help="write startup.json/.md here")
    parser.add_argument("up_args", nargs="*", help="flags for `oss-serve up` (after --)")
    args = parser.parse_args()
    result, printed = measure(args.cold, args.requests, args.up_args)
    page = markdown(result)
    print(page)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "startup.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.output_dir / "startup.md").write_text(page)
        (args.output_dir / "up-output.txt").write_text(printed)
        print(f"wrote {args.output_dir}/startup.json, startup.md, up-output.txt")


if __name__ == "__main__":
    main()
