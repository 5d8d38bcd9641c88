"""The planner beside every figure vLLM printed in a published gpt-oss start-up log.

`vllm_startup_logs.json` (next to this file) lists the logs: link, model, GPU, count,
vLLM version, the deployment's non-default options, and the figures. Each figure is
compared with what `oss-serve plan --engine vllm` predicts for that deployment; the error
is relative to the figure, except for the available KV memory, which can be near zero and
is compared relative to the memory the deployment requested (total x utilization).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oss_serve.benchmarks.capacity import plan_deployment
from oss_serve.benchmarks.gpu_catalog import GIB
from oss_serve.benchmarks.planner import PlanOptions

SOURCES_FILE = Path(__file__).with_name("vllm_startup_logs.json")
TOLERANCE = 0.05
FIGURE_NAMES = {
    "weights_gib": "Model loading took (GiB)",
    "available_kv_cache_gib": "Available KV cache memory (GiB)",
    "max_concurrency": "Maximum concurrency (x)",
}


@dataclass(frozen=True)
class FigureCheck:
    """One published figure and the planner's prediction of it."""

    source_id: str
    url: str
    deployment: str
    figure: str
    published: float
    predicted: float
    error: float  # signed, relative to `basis`
    basis: str

    @property
    def ok(self) -> bool:
        return abs(self.error) <= TOLERANCE


def load_sources(path: Path = SOURCES_FILE) -> list[dict[str, Any]]:
    sources: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["sources"]
    return sources


def _predicted(plan: dict[str, Any], figure: str) -> float:
    if figure == "weights_gib":
        return float(plan["weights_bytes_per_gpu"]) / GIB
    if figure == "max_concurrency":
        return float(plan["max_concurrency"])
    if figure == "available_kv_cache_gib":
        reserved = sum(
            plan[key]
            for key in (
                "weights_bytes_per_gpu",
                "activation_bytes_per_gpu",
                "non_torch_bytes_per_gpu",
                "cuda_graph_bytes_per_gpu",
            )
        )
        return float(plan["usable_bytes_per_gpu"] - reserved) / GIB
    raise ValueError(f"figure: {figure!r} is not one of {', '.join(FIGURE_NAMES)}")


def check_source(source: dict[str, Any]) -> list[FigureCheck]:
    """Every figure of one log beside the plan of that deployment."""
    options = PlanOptions(num_gpus=source["num_gpus"], **source["options"])
    plan = plan_deployment(source["model"], source["gpu"], options)
    checks = []
    for figure, published in source["figures"].items():
        predicted = _predicted(plan, figure)
        if figure == "available_kv_cache_gib":
            basis_value, basis = plan["usable_bytes_per_gpu"] / GIB, "requested memory"
        else:
            basis_value, basis = published, "figure"
        checks.append(
            FigureCheck(
                source_id=source["id"],
                url=source["url"],
                deployment=f"{source['model']} on {source['num_gpus']} x {source['gpu']}",
                figure=figure,
                published=float(published),
                predicted=round(predicted, 4),
                error=(predicted - published) / basis_value,
                basis=basis,
            )
        )
    return checks


def check_sources(path: Path = SOURCES_FILE) -> list[FigureCheck]:
    return [check for source in load_sources(path) for check in check_source(source)]


def sources_markdown(checks: list[FigureCheck]) -> str:
    lines = [
        "Planner (engine vllm) against vLLM start-up logs of gpt-oss "
        "(benchmarks/vllm_startup_logs.json)",
        "",
        "| source | deployment | figure | published | planner | error | within 5 % |",
        "| --- | --- | --- | ---: | ---: | --- | --- |",
    ]
    for check in checks:
        lines.append(
            f"| [{check.source_id}]({check.url}) | {check.deployment} "
            f"| {FIGURE_NAMES[check.figure]} | {check.published:g} | {check.predicted:.2f} "
            f"| {check.error:+.1%} of the {check.basis} | {'yes' if check.ok else 'NO'} |"
        )
    return "\n".join(lines) + "\n"
