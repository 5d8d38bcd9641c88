"""`oss-serve bench --plan-check`: the planner's prediction beside what the bench measured.

For each load point the planner is asked about the workload that was actually sent (mean
input and output tokens of the completed requests) at the concurrency that was actually
held (Little's law: the sum of request latencies over the wall time), so a rate-mode run
is checked at its achieved concurrency, not at a guess.
"""

from __future__ import annotations

from typing import Any

from oss_serve.benchmarks.capacity import build_deployment
from oss_serve.benchmarks.planner import PlanOptions
from oss_serve.benchmarks.report import markdown_table, run_records


def planner_model(served_name: str) -> str:
    """A served model name such as `openai/gpt-oss-120b` -> the preset it names, else as is."""
    from pathlib import Path

    from oss_serve.workers.model.config import PRESETS

    if served_name in PRESETS or Path(served_name).exists():
        return served_name
    for preset in sorted(PRESETS, key=len, reverse=True):
        if preset in served_name.lower():
            return preset
    return served_name


def achieved_concurrency(run: dict[str, Any]) -> float:
    """Mean requests in flight over the load point (sum of end-to-end latencies / wall time)."""
    busy_s = sum(r.e2e_s or 0.0 for r in run_records(run) if r.ok)
    return busy_s / max(run["duration_s"], 1e-9)


def _ratio(measured: float | None, predicted: float | None) -> str:
    if not measured or not predicted:
        return "–"
    return f"{measured / predicted:.2f}x"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def plan_check_section(
    document: dict[str, Any],
    *,
    model: str,
    gpu: str,
    num_gpus: int,
    weights: str,
    max_model_len: int | None,
    gpu_memory_utilization: float,
    engine: str = "vllm",
) -> dict[str, Any]:
    """Rows of (measured, predicted) per load point, and their Markdown table."""
    model = planner_model(model)
    rows = []
    for run in document["runs"]:
        tokens = run["tokens"]
        if not run["requests"]["completed"]:
            continue
        options = PlanOptions(
            num_gpus=num_gpus,
            max_model_len=max_model_len,
            weights=weights,  # type: ignore[arg-type]  # PlanOptions validates it
            gpu_memory_utilization=gpu_memory_utilization,
            input_len=max(1, round(tokens["input_mean"])),
            output_len=max(1, round(tokens["output_mean"])),
            engine=engine,  # type: ignore[arg-type]  # PlanOptions validates it
        )
        deployment = build_deployment(model, gpu, options)
        concurrency = achieved_concurrency(run)
        batch = max(1, min(round(concurrency), deployment.memory.max_num_seqs))
        predicted = deployment.at_batch(batch)
        prefill_s = deployment.speed.prefill_s(
            options.input_len, deployment.memory.max_num_batched_tokens
        )
        latency = run["latency_ms"]
        rows.append(
            {
                "load": run["load"]["label"],
                "achieved_concurrency": round(concurrency, 2),
                "planner_batch": batch,
                "planner_max_concurrency_workload": round(
                    deployment.memory.max_concurrency_workload, 2
                ),
                "measured_output_tokens_per_s": run["throughput"]["output_tokens_per_s"],
                "predicted_output_tokens_per_s": predicted["output_tokens_per_s"],
                "measured_tpot_ms": latency["tpot"]["mean"],
                "predicted_tpot_ms": predicted["tpot_ms"],
                "measured_ttft_p50_ms": latency["ttft"]["p50"],
                "predicted_ttft_unloaded_ms": round(prefill_s * 1e3, 3),
            }
        )
    return {
        "model": model,
        "gpu": gpu,
        "num_gpus": num_gpus,
        "weights": weights,
        "engine": engine,
        "rows": rows,
        "markdown": _markdown(rows, model, gpu, num_gpus, engine),
    }


def _markdown(rows: list[dict[str, Any]], model: str, gpu: str, num_gpus: int, engine: str) -> str:
    header = [
        "load",
        "concurrency held",
        "output tok/s measured",
        "predicted",
        "ratio",
        "TPOT ms measured",
        "predicted",
        "ratio",
        "TTFT p50 ms measured",
        "predicted (unloaded)",
    ]
    body = [
        [
            row["load"],
            _num(row["achieved_concurrency"], 2),
            _num(row["measured_output_tokens_per_s"]),
            _num(row["predicted_output_tokens_per_s"]),
            _ratio(row["measured_output_tokens_per_s"], row["predicted_output_tokens_per_s"]),
            _num(row["measured_tpot_ms"], 2),
            _num(row["predicted_tpot_ms"], 2),
            _ratio(row["measured_tpot_ms"], row["predicted_tpot_ms"]),
            _num(row["measured_ttft_p50_ms"]),
            _num(row["predicted_ttft_unloaded_ms"]),
        ]
        for row in rows
    ]
    title = (
        f"Planner: {model} on {num_gpus} x {gpu}, engine {engine} "
        "(roofline; ratio = measured / predicted)"
    )
    return f"{title}\n\n{markdown_table(header, body)}\n"
