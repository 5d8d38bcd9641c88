"""`oss-serve plan --sweep`: every catalog GPU x {1, 2, 4, 8} x both models, as a table and a plot.

The plot has one row per model: on the left, cost per million output tokens against
concurrency (batch size) for every deployment that can serve the workload; on the right,
a GPU x GPU-count grid with the cheapest cost of each cell, and a cross where it does not
fit at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from oss_serve.benchmarks.capacity import plan_deployment
from oss_serve.benchmarks.gpu_catalog import CATALOG, GIB
from oss_serve.benchmarks.planner import PlanOptions

SWEEP_MODELS = ("gpt-oss-20b", "gpt-oss-120b")
SWEEP_GPU_COUNTS = (1, 2, 4, 8)


def sweep_plans(
    options: PlanOptions,
    models: tuple[str, ...] = SWEEP_MODELS,
    gpu_counts: tuple[int, ...] = SWEEP_GPU_COUNTS,
    on_plan: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One plan per (model, GPU, count); `options.num_gpus` is replaced by each count."""
    plans = []
    for model in models:
        for gpu in CATALOG.values():
            for count in gpu_counts:
                plan = plan_deployment(model, gpu, replace(options, num_gpus=count))
                plans.append(plan)
                if on_plan is not None:
                    on_plan(plan)
    return plans


def status_text(plan: dict[str, Any]) -> str:
    if plan["status"] == "fits":
        return "fits"
    if plan["status"] == "reduce_max_model_len":
        return f"max-model-len <= {plan['max_model_len_that_fits']:,}"
    return "does not fit"


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def sweep_rows(plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compact per-deployment summary the table and `--json` print."""
    keys = (
        "model",
        "gpu",
        "num_gpus",
        "engine",
        "status",
        "weights_bytes_per_gpu",
        "kv_cache_bytes_per_gpu",
        "kv_cache_tokens",
        "max_concurrency",
        "max_concurrency_workload",
        "max_model_len_that_fits",
        "batch1_tokens_per_s",
        "usd_per_hour",
        "usd_per_million_output_tokens",
        "best_batch",
        "output_tokens_per_s_at_best",
        "moe_backend",
        "weights_path",
    )
    return [{key: plan[key] for key in keys} for plan in plans]


def sweep_markdown(plans: list[dict[str, Any]]) -> str:
    header = (
        "| model | GPU | n | status | weights GiB/GPU | KV GiB/GPU | KV tokens "
        "| max conc. @ max len | batch-1 tok/s | $/h | best $/M out | at batch | out tok/s |"
    )
    lines = [
        header,
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for plan in plans:
        servable = bool(plan["decode"])
        lines.append(
            "| "
            + " | ".join(
                [
                    plan["model"],
                    plan["gpu"],
                    str(plan["num_gpus"]),
                    status_text(plan),
                    f"{plan['weights_bytes_per_gpu'] / GIB:.1f}",
                    f"{plan['kv_cache_bytes_per_gpu'] / GIB:.1f}",
                    f"{plan['kv_cache_tokens']:,}",
                    f"{plan['max_concurrency']:.2f}",
                    _cell(plan["batch1_tokens_per_s"] if servable else None, ",.0f"),
                    f"{plan['usd_per_hour']:.2f}",
                    _cell(plan["usd_per_million_output_tokens"], ".3f"),
                    _cell(plan["best_batch"], "d"),
                    _cell(plan["output_tokens_per_s_at_best"], ",.0f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot_sweep(plans: list[dict[str, Any]], path: Path) -> Path:
    """Cost vs concurrency curves and the fit/cost grid, one row per model."""
    models = list(dict.fromkeys(plan["model"] for plan in plans))
    gpus = list(dict.fromkeys(plan["gpu"] for plan in plans))
    counts = sorted({plan["num_gpus"] for plan in plans})
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(gpus), 2)))
    styles = ["-", "--", "-.", ":"]
    fig, axes = plt.subplots(
        len(models),
        2,
        figsize=(16, 6.5 * len(models)),
        gridspec_kw={"width_ratios": [3, 2]},
        squeeze=False,
    )
    for row, model in enumerate(models):
        mine = [plan for plan in plans if plan["model"] == model]
        _plot_curves(axes[row][0], mine, gpus, counts, colours, styles)
        axes[row][0].set_title(f"{model}: cost per million output tokens vs concurrency")
        _plot_grid(axes[row][1], mine, gpus, counts)
        axes[row][1].set_title(f"{model}: cheapest $/M output tokens (x = does not fit)")
    handles = [
        plt.Line2D([], [], color=colours[i], lw=2, label=gpu) for i, gpu in enumerate(gpus)
    ] + [
        plt.Line2D([], [], color="black", ls=styles[i % len(styles)], label=f"{count} GPU")
        for i, count in enumerate(counts)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=8, fontsize=8)
    workload = plans[0]["assumptions"]["workload_tokens"]
    fig.suptitle(
        f"oss-serve plan --sweep --engine {plans[0]['engine']} "
        f"({workload['input']} in / {workload['output']} out tokens, "
        f"max-model-len {plans[0]['max_model_len']:,}, roofline estimates)"
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _plot_curves(
    axis: Any,
    plans: list[dict[str, Any]],
    gpus: list[str],
    counts: list[int],
    colours: Any,
    styles: list[str],
) -> None:
    for plan in plans:
        if not plan["decode"]:
            continue
        batches = [r["batch"] for r in plan["decode"] if r["usd_per_million_output_tokens"]]
        costs = [
            r["usd_per_million_output_tokens"]
            for r in plan["decode"]
            if r["usd_per_million_output_tokens"]
        ]
        axis.plot(
            batches,
            costs,
            color=colours[gpus.index(plan["gpu"])],
            ls=styles[counts.index(plan["num_gpus"]) % len(styles)],
            lw=1.2,
            alpha=0.9 if plan["status"] == "fits" else 0.45,
        )
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("concurrency (sequences in the batch)")
    axis.set_ylabel("USD per million output tokens")
    axis.grid(alpha=0.3, which="both")


def _plot_grid(axis: Any, plans: list[dict[str, Any]], gpus: list[str], counts: list[int]) -> None:
    costs = np.full((len(gpus), len(counts)), np.nan)
    for plan in plans:
        i, j = gpus.index(plan["gpu"]), counts.index(plan["num_gpus"])
        cost = plan["usd_per_million_output_tokens"]
        if cost is not None:
            costs[i, j] = cost
        label = (
            "x" if plan["status"] == "does_not_fit" else ("–" if cost is None else f"{cost:.2f}")
        )
        if plan["status"] == "reduce_max_model_len" and cost is not None:
            label += "*"
        axis.text(j, i, label, ha="center", va="center", fontsize=8)
    finite = costs[np.isfinite(costs)]
    if finite.size:
        norm = matplotlib.colors.LogNorm(
            vmin=finite.min(), vmax=max(finite.max(), finite.min() * 1.01)
        )
        axis.imshow(costs, cmap="RdYlGn_r", norm=norm, aspect="auto")
    axis.set_xticks(range(len(counts)), [f"{c} GPU" for c in counts])
    axis.set_yticks(range(len(gpus)), gpus)
    axis.set_xlabel("* = only with a shorter max-model-len")
