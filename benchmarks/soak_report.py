"""The soak's report: soak.json (everything), soak.md (the checks) and soak.png (RSS, queue
depth and latency over time)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LATENCY_BIN_S = 5.0


def write_report(result: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "soak.json", out_dir / "soak.md", out_dir / "soak.png"]
    samples = ",\n  ".join(json.dumps(sample) for sample in result["samples"])
    rows = ",\n   ".join(json.dumps(row) for row in result["requests"]["rows"])
    rest = {k: v for k, v in result.items() if k not in ("samples", "requests")}
    paths[0].write_text(  # one line per sample and per request: readable, diffable, small
        json.dumps(rest, indent=1)[:-2]
        + f',\n "samples": [\n  {samples}\n ],\n "requests": {{"columns": '
        + f'{json.dumps(result["requests"]["columns"])}, "rows": [\n   {rows}\n ]}}\n}}\n'
    )
    paths[1].write_text(markdown(result))
    plot(result, paths[2])
    return paths


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(result: dict[str, Any]) -> str:
    checks, config = result["checks"], result["config"]
    early, late = checks["windows_s"]["early"], checks["windows_s"]["late"]
    lines = [
        "# Soak and overload",
        "",
        f"`{result.get('command', 'python -m oss_serve.benchmarks.soak')}`",
        "",
        f"Capacity (closed loop, {config['calibrate_s']:g} s): {result['capacity_per_s']} "
        f"requests/s; driven at {result['rate_per_s']} requests/s ({config['overload']:g}x) "
        f"for {config['duration_s']:g} s, {config['input_tokens']} tokens in, "
        f"{config['output_tokens']} out. Windows compared: {early[0]:.0f}-{early[1]:.0f} s "
        f"and {late[0]:.0f}-{late[1]:.0f} s.",
        "",
        "| check | result | |",
        "| --- | --- | --- |",
        f"| only 200 and 429 | {_mark(checks['only_200_and_429'])} | {checks['outcomes']} |",
        f"| every 429 has Retry-After | {_mark(checks['every_429_has_retry_after'])} | |",
        f"| no request left hanging | {_mark(checks['none_hanging'])} | |",
        f"| RSS growth < 5 % | {_mark(checks['rss_growth_under_5pct'])} | "
        + ", ".join(f"{k}: {v * 100:+.1f} %" for k, v in checks["rss_growth"].items())
        + " |",
        f"| p99 TTFT of admitted requests steady | {_mark(checks['ttft_p99_steady'])} | "
        f"{checks['ttft_p99_s']['early'] * 1000:.0f} ms -> "
        f"{checks['ttft_p99_s']['late'] * 1000:.0f} ms |",
        f"| Redis bounded | max {checks['max_stream_entries']} request entries, "
        f"{checks['max_kv_events']} kv-events | used memory "
        f"{checks['redis_used_mib']['early']:.1f} -> {checks['redis_used_mib']['late']:.1f} MiB;"
        f" {checks['settled_stream_entries']} entries left after the run |",
        "",
        "![soak](soak.png)",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    samples = result["samples"]
    times = [s["t_s"] for s in samples]
    fig, (rss, depth, latency) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for label in samples[0]["rss_mib"] if samples else []:
        rss.plot(times, [s["rss_mib"][label] for s in samples], label=label)
    rss.set_ylabel("RSS (MiB)")
    rss.legend(loc="upper left", fontsize="small")
    for key, label in (
        ("running", "engine running"),
        ("waiting", "engine waiting"),
        ("queued", "Redis queued"),
        ("client_in_flight", "client in flight"),
    ):
        depth.plot(times, [s[key] for s in samples], label=label)
    depth.set_ylabel("requests")
    depth.legend(loc="upper left", fontsize="small")
    _latency_panel(latency, result)
    latency.set_xlabel("time since the overload began (s)")
    fig.suptitle(
        f"soak at {result['config']['overload']:g}x capacity ({result['rate_per_s']} req/s)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency_panel(axis: Any, result: dict[str, Any]) -> None:
    bins: dict[int, list[float]] = {}
    refused: dict[int, int] = {}
    columns = result["requests"]["columns"]
    for row in result["requests"]["rows"]:
        request = dict(zip(columns, row, strict=True))
        slot = int(request["start_s"] // LATENCY_BIN_S)
        if request["error"] is None and request["ttft_s"] is not None:
            bins.setdefault(slot, []).append(request["ttft_s"])
        elif request["error"] == "http_429":
            refused[slot] = refused.get(slot, 0) + 1
    slots = sorted(bins)
    mids = [(slot + 0.5) * LATENCY_BIN_S for slot in slots]
    for quantile, label in ((0.5, "TTFT p50"), (0.99, "TTFT p99")):
        values = []
        for slot in slots:
            ordered = sorted(bins[slot])
            values.append(ordered[min(len(ordered) - 1, int(quantile * len(ordered)))])
        axis.plot(mids, values, marker=".", label=f"{label} (admitted)")
    axis.set_ylabel("TTFT (s)")
    axis.legend(loc="upper left", fontsize="small")
    twin = axis.twinx()
    every = sorted(refused)
    twin.bar(
        [(s + 0.5) * LATENCY_BIN_S for s in every],
        [refused[s] / LATENCY_BIN_S for s in every],
        width=LATENCY_BIN_S * 0.8,
        alpha=0.2,
        color="red",
        label="429 / s",
    )
    twin.set_ylabel("429 per second")
    twin.legend(loc="upper right", fontsize="small")
