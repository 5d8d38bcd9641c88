"""Start-up time and memory of `oss-serve up` (not a test: a measurement to run by hand).

    OSS_SERVE_VOCAB_DIR=/work/shared/vocab RAY_AUTH_MODE=disabled \\
        .venv/bin/python -m tests.e2e.measure_up [--cold] [-- <up flags>]

Reports seconds to /ready, then RSS and PSS (shared pages counted once, by share) of the
whole process tree per component after a few chat requests, then the seconds SIGTERM takes
to stop everything. `--cold` points the cache at an empty folder, so the demo model is
trained first (the first run on a fresh machine).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from tests.e2e.up_process import UpProcess, left_behind


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="empty cache: train the demo model")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("up_args", nargs="*", help="flags for `oss-serve up` (after --)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="measure-up-"))
    env = {"OSS_SERVE_CACHE_DIR": str(folder / "cache")} if args.cold else {}
    up = UpProcess(folder, *args.up_args, env=env).start()
    try:
        ready_s = up.wait_ready(timeout_s=1800)
        models = httpx.get(
            f"{up.base_url}/v1/models", headers={"Authorization": f"Bearer {up.api_key()}"}
        ).json()
        model = models["data"][0]["id"]
        chat(up, model, args.requests)
        memory = memory_by_component(up)
        processes = up.tree()
        stop_started = time.monotonic()
        code = up.terminate()
        stop_s = time.monotonic() - stop_started
        leftovers = left_behind(processes)
    finally:
        up.kill_tree()
    print(f"model {model}; {'cold (demo model trained)' if args.cold else 'warm'}")
    print(f"ready after {ready_s:.1f} s; SIGTERM -> exit {code} in {stop_s:.1f} s")
    print(f"processes {len(processes)}; left behind: {leftovers or 'none'}")
    print(f"{'component':<56} {'RSS MiB':>9} {'PSS MiB':>9}")
    for name, (rss, pss) in sorted(memory.items(), key=lambda item: -item[1][1]):
        print(f"{name:<56} {rss / 2**20:>9.0f} {pss / 2**20:>9.0f}")
    total_rss = sum(rss for rss, _ in memory.values())
    total_pss = sum(pss for _, pss in memory.values())
    print(f"{'total':<56} {total_rss / 2**20:>9.0f} {total_pss / 2**20:>9.0f}")


if __name__ == "__main__":
    main()
