"""Bench reports: the JSON document (schema in benchmarks/SCHEMA.md), Markdown tables, compare.

The JSON is the source of truth: Markdown and plots are rendered from it, and `compare`
reads two or more of them back, so every number in a table can be traced to a file.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oss_serve import __version__
from oss_serve.benchmarks.loadgen import Budget, LoadPointResult
from oss_serve.benchmarks.metrics import SLO, RequestRecord, distribution_ms, summarize
from oss_serve.benchmarks.stream_client import Endpoint
from oss_serve.benchmarks.workloads import Workload

SCHEMA = "oss-serve.bench/v1"
# Event-loop lag of the bench itself above these (mean, or p99) means the client was part
# of the measured latency; isolated OS hiccups on a shared machine stay below them.
CLIENT_LAG_WARN_MEAN_MS = 5.0
CLIENT_LAG_WARN_P99_MS = 50.0


class ReportError(ValueError):
    """A file given to `compare` is not a bench report."""


def build_report(
    *,
    endpoint: Endpoint,
    workload: Workload,
    budget: Budget,
    seed: int,
    warmup_requests: int,
    slo: SLO,
    results: list[LoadPointResult],
    started_unix_s: float,
    label: str | None = None,
    load_average_start: list[float] | None = None,
) -> dict[str, Any]:
    """One JSON-ready document for a bench invocation (all load points of a sweep)."""
    return {
        "schema": SCHEMA,
        "label": label,
        "created_unix_s": round(started_unix_s, 3),
        "finished_unix_s": round(time.time(), 3),
        "environment": {
            "oss_serve_version": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "cpus": os.cpu_count(),
            # the machine's 1/5/15-minute load averages: on a shared machine, what else ran
            "load_average_start": load_average_start,
            "load_average_end": load_average(),
        },
        "config": {
            "chat_url": endpoint.chat_url,
            "model": endpoint.model,
            "workload": workload.describe(),
            "num_requests": budget.num_requests,
            "duration_s": budget.duration_s,
            "warmup_requests": warmup_requests,
            "seed": seed,
            "timeout_s": endpoint.timeout_s,
            "stream_usage": endpoint.stream_usage,
            "extra_body_keys": sorted(endpoint.extra_body),
            "slo": slo.to_json(),
        },
        "runs": [
            {
                "load": result.point.to_json(),
                **summarize(result.records, result.duration_s, slo),
                "client": {
                    "loop_lag_ms": distribution_ms(result.loop_lag_s),
                    "peak_rss_bytes": result.peak_rss_bytes,
                },
                "server_metrics": result.server_metrics,
                "requests_detail": [record.to_json() for record in result.records],
            }
            for result in results
        ],
    }


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def load_report(path: Path) -> dict[str, Any]:
    """Read a report written by `oss-serve bench`, refusing anything else by name."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not JSON ({err.msg})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ReportError(f"{path}: not an oss-serve bench report (schema {SCHEMA!r} expected)")
    return document


def run_records(run: dict[str, Any]) -> list[RequestRecord]:
    return [RequestRecord.from_json(item) for item in run.get("requests_detail", [])]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:,.{digits}f}"
    return str(value)


def _pair(latency: dict[str, Any], name: str) -> str:
    stats = latency[name]
    return f"{_fmt(stats['p50'])} / {_fmt(stats['p99'])}"


def _errors(run: dict[str, Any]) -> str:
    errors = run["requests"]["errors"]
    return ", ".join(f"{kind} {count}" for kind, count in errors.items()) or "none"


SUMMARY_COLUMNS = (
    "load",
    "ok / sent",
    "req/s",
    "output tok/s",
    "total tok/s",
    "goodput req/s",
    "TTFT p50 / p99 ms",
    "TPOT p50 / p99 ms",
    "ITL p50 / p99 ms",
    "E2E p50 / p99 ms",
    "errors",
)


def summary_row(run: dict[str, Any], label: str | None = None) -> list[str]:
    latency = run["latency_ms"]
    throughput = run["throughput"]
    return [
        label or run["load"]["label"],
        f"{run['requests']['completed']} / {run['requests']['total']}",
        _fmt(throughput["requests_per_s"], 2),
        _fmt(throughput["output_tokens_per_s"]),
        _fmt(throughput["total_tokens_per_s"]),
        _fmt(run["goodput"]["requests_per_s"], 2),
        _pair(latency, "ttft"),
        _pair(latency, "tpot"),
        _pair(latency, "itl"),
        _pair(latency, "e2e"),
        _errors(run),
    ]


BESIDE_COLUMNS = (
    "load",
    "prefix-cache hits / looked-up prompt tokens",
    "bench loop lag p99 / max ms",
    "bench peak RSS MiB",
)


def beside_row(run: dict[str, Any]) -> list[str]:
    """What was measured beside the requests: the server's prefix cache, the bench itself."""
    server = run.get("server_metrics") or {}
    cache = server.get("prefix_cache")
    if cache:
        rate = cache["hit_rate"]
        share = f" ({rate:.0%})" if rate is not None else ""
        cache_cell = f"{cache['hit_tokens']:,} / {cache['query_tokens']:,}{share}"
    else:
        cache_cell = "–"
    client = run.get("client", {})
    lag = client.get("loop_lag_ms") or {}
    rss = client.get("peak_rss_bytes")
    return [
        run["load"]["label"],
        cache_cell,
        f"{_fmt(lag.get('p99'))} / {_fmt(lag.get('max'))}",
        _fmt(rss / 2**20, 0) if rss else "–",
    ]


def markdown_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    right = {i for i, name in enumerate(header) if name not in ("load", "run", "errors", "metric")}
    lines = ["| " + " | ".join(header) + " |"]
    lines.append(
        "| " + " | ".join("---:" if i in right else "---" for i in range(len(header))) + " |"
    )
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(document: dict[str, Any]) -> str:
    """The human-readable page of one report: settings, then one row per load point."""
    config = document["config"]
    workload = config["workload"]
    slo = config["slo"]
    bounds = [
        f"{k.removesuffix('_ms').upper()} <= {v:g} ms" for k, v in slo.items() if v is not None
    ]
    budget = (
        f"{config['num_requests']} requests"
        if config["num_requests"] is not None
        else f"{config['duration_s']:g} s"
    )
    lines = [
        f"**{config['model']}** at `{config['chat_url']}` — workload `{workload['kind']}` "
        f"(input {workload['input_len']}, output {workload['output_len']} tokens), "
        f"{budget} per load point, seed {config['seed']}, "
        f"goodput SLO: {', '.join(bounds) or 'none'}.",
        "",
        markdown_table(SUMMARY_COLUMNS, [summary_row(run) for run in document["runs"]]),
        "",
        markdown_table(BESIDE_COLUMNS, [beside_row(run) for run in document["runs"]]),
    ]
    errors = sorted(
        {
            str(server["error"])
            for server in (run.get("server_metrics") for run in document["runs"])
            if server and server.get("error")
        }
    )
    if errors:
        lines += ["", f"Server metrics not read: {'; '.join(errors)}."]
    environment = document.get("environment", {})
    start, end = environment.get("load_average_start"), environment.get("load_average_end")
    if start and end:
        lines += [
            "",
            f"Machine: {environment.get('cpus')} CPUs; 1-minute load average {start[0]:g} "
            f"at the start, {end[0]:g} at the end (5-minute: {start[1]:g}, {end[1]:g}).",
        ]
    busy = [run["load"]["label"] for run in document["runs"] if _client_was_busy(run)]
    if busy:
        lines += [
            "",
            f"Warning: the load generator's own event loop ran late (mean lag > "
            f"{CLIENT_LAG_WARN_MEAN_MS:g} ms or p99 > {CLIENT_LAG_WARN_P99_MS:g} ms) at "
            f"{', '.join(busy)}: latencies there include client-side delay; spread the load "
            "(--request-rate) or run several bench processes.",
        ]
    plan_check = document.get("plan_check")
    if plan_check:
        lines += ["", "Planner prediction beside the measurement:", "", plan_check["markdown"]]
    return "\n".join(lines) + "\n"


def _client_was_busy(run: dict[str, Any]) -> bool:
    lag = run.get("client", {}).get("loop_lag_ms", {})
    return (lag.get("mean") or 0) > CLIENT_LAG_WARN_MEAN_MS or (
        lag.get("p99") or 0
    ) > CLIENT_LAG_WARN_P99_MS


@dataclass(frozen=True)
class _CompareMetric:
    name: str
    path: tuple[str, ...]
    higher_is_better: bool


_COMPARE_METRICS = (
    _CompareMetric("requests/s", ("throughput", "requests_per_s"), True),
    _CompareMetric("output tokens/s", ("throughput", "output_tokens_per_s"), True),
    _CompareMetric("total tokens/s", ("throughput", "total_tokens_per_s"), True),
    _CompareMetric("goodput requests/s", ("goodput", "requests_per_s"), True),
    _CompareMetric("TTFT p50 ms", ("latency_ms", "ttft", "p50"), False),
    _CompareMetric("TTFT p99 ms", ("latency_ms", "ttft", "p99"), False),
    _CompareMetric("TPOT p50 ms", ("latency_ms", "tpot", "p50"), False),
    _CompareMetric("TPOT p99 ms", ("latency_ms", "tpot", "p99"), False),
    _CompareMetric("ITL p50 ms", ("latency_ms", "itl", "p50"), False),
    _CompareMetric("ITL p99 ms", ("latency_ms", "itl", "p99"), False),
    _CompareMetric("E2E p50 ms", ("latency_ms", "e2e", "p50"), False),
    _CompareMetric("failed requests", ("requests", "failed"), False),
)


def _lookup(run: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = run
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def compare_columns(
    documents: list[tuple[str, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any]]]:
    """(column label, run) for every load point of every report, in the order given."""
    columns = []
    for label, document in documents:
        for run in document["runs"]:
            load = run["load"]["label"]
            columns.append((f"{label} {load}" if len(document["runs"]) > 1 else label, run))
    return columns


def compare_markdown(documents: list[tuple[str, dict[str, Any]]]) -> str:
    """Metrics as rows, runs as columns; each later column shows its ratio to the first."""
    columns = compare_columns(documents)
    header = ["metric", *(label for label, _ in columns)]
    rows = []
    for metric in _COMPARE_METRICS:
        base = _lookup(columns[0][1], metric.path)
        cells = [f"{metric.name} {'↑' if metric.higher_is_better else '↓'}"]
        for index, (_, run) in enumerate(columns):
            value = _lookup(run, metric.path)
            cell = _fmt(float(value), 2) if isinstance(value, int | float) else "–"
            if index and isinstance(value, int | float) and isinstance(base, int | float) and base:
                cell += f" ({value / base:.2f}x)"
            cells.append(cell)
        rows.append(cells)
    return markdown_table(header, rows) + "\n"
