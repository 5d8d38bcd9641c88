"""PNG plots of bench reports: latency CDFs, throughput vs load, TTFT/TPOT vs load.

matplotlib with the Agg backend (no display needed); every function takes report
runs (dicts from the JSON) so that a fresh run and `compare` draw the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from oss_serve.benchmarks.report import run_records

Series = list[tuple[str, list[dict[str, Any]]]]  # (label, runs of one report)

_CDF_METRICS = (
    ("ttft", "TTFT"),
    ("tpot", "TPOT"),
    ("itl", "inter-token latency"),
    ("e2e", "end-to-end latency"),
)


def _values_ms(run: dict[str, Any], metric: str) -> np.ndarray:
    records = [r for r in run_records(run) if r.ok]
    if metric == "itl":
        values = [gap for r in records for gap in r.itl_s]
    elif metric == "tpot":
        values = [t for r in records if (t := r.tpot_s) is not None]
    else:
        values = [v for r in records if (v := getattr(r, f"{metric}_s")) is not None]
    return np.sort(np.asarray(values, dtype=np.float64) * 1000.0)


def plot_latency_cdfs(series: Series, path: Path) -> Path:
    """One panel per latency metric, one curve per load point of each report."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for axis, (metric, title) in zip(axes.flat, _CDF_METRICS, strict=True):
        for label, runs in series:
            for run in runs:
                values = _values_ms(run, metric)
                if values.size == 0:
                    continue
                fraction = np.arange(1, values.size + 1) / values.size
                name = label if len(runs) == 1 else f"{label} {run['load']['label']}"
                axis.step(values, fraction, where="post", label=name)
        axis.set_title(title)
        axis.set_xlabel("ms")
        axis.set_ylabel("fraction of requests" if metric != "itl" else "fraction of gaps")
        axis.grid(alpha=0.3)
        axis.set_ylim(0, 1.01)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle("Latency distributions")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return _save(fig, path)


def _load_axis(runs: list[dict[str, Any]]) -> tuple[str, list[float]]:
    mode = runs[0]["load"]["mode"]
    if mode == "concurrency":
        return "concurrency", [float(run["load"]["concurrency"]) for run in runs]
    rates = [
        float("inf") if r == "inf" else float(r) for r in (x["load"]["request_rate"] for x in runs)
    ]
    finite = [r for r in rates if r != float("inf")]
    # "all at once" is drawn one step past the fastest finite rate.
    stand_in = 2 * max(finite) if finite else 1.0
    return "request rate (sessions/s; inf drawn at 2x max)", [
        stand_in if r == float("inf") else r for r in rates
    ]


def plot_throughput_vs_load(series: Series, path: Path) -> Path:
    """Output tokens/s and goodput tokens/s of each load point."""
    fig, axis = plt.subplots(figsize=(8, 5))
    x_label = "load"
    for label, runs in series:
        x_label, xs = _load_axis(runs)
        output = [run["throughput"]["output_tokens_per_s"] for run in runs]
        goodput = [run["goodput"]["output_tokens_per_s"] for run in runs]
        (line,) = axis.plot(xs, output, marker="o", label=f"{label} output tok/s")
        if runs[0]["goodput"]["slo"] and any(
            v is not None for v in runs[0]["goodput"]["slo"].values()
        ):
            axis.plot(
                xs,
                goodput,
                marker="x",
                ls="--",
                color=line.get_color(),
                label=f"{label} goodput tok/s",
            )
    axis.set_xlabel(x_label)
    axis.set_ylabel("tokens/s")
    _log_x_if_wide(axis, series)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("Throughput vs load")
    fig.tight_layout()
    return _save(fig, path)


def plot_latency_vs_load(series: Series, path: Path) -> Path:
    """TTFT and TPOT (p50 solid, p99 dashed) of each load point."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for axis, metric, title in ((axes[0], "ttft", "TTFT"), (axes[1], "tpot", "TPOT")):
        x_label = "load"
        for label, runs in series:
            x_label, xs = _load_axis(runs)
            p50 = [run["latency_ms"][metric]["p50"] for run in runs]
            p99 = [run["latency_ms"][metric]["p99"] for run in runs]
            (line,) = axis.plot(xs, p50, marker="o", label=f"{label} p50")
            axis.plot(xs, p99, marker="^", ls="--", color=line.get_color(), label=f"{label} p99")
        axis.set_xlabel(x_label)
        axis.set_ylabel("ms")
        axis.set_title(f"{title} vs load")
        _log_x_if_wide(axis, series)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_report_set(series: Series, out_dir: Path, prefix: str = "") -> list[Path]:
    """The three standard plots, written as <prefix>latency_cdf.png, ... in `out_dir`."""
    return [
        plot_latency_cdfs(series, out_dir / f"{prefix}latency_cdf.png"),
        plot_throughput_vs_load(series, out_dir / f"{prefix}throughput_vs_load.png"),
        plot_latency_vs_load(series, out_dir / f"{prefix}latency_vs_load.png"),
    ]


def _log_x_if_wide(axis: Any, series: Series) -> None:
    xs = [x for _, runs in series for x in _load_axis(runs)[1]]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        axis.set_xscale("log")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
