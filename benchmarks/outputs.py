"""Files a bench run or a comparison leaves behind: JSON, Markdown and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oss_serve.benchmarks.plots import plot_report_set
from oss_serve.benchmarks.report import compare_markdown, markdown_report, write_json


def write_bench_outputs(document: dict[str, Any], out_dir: Path) -> list[Path]:
    """result.json, report.md and the three standard plots in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "result.json"
    write_json(document, json_path)
    markdown_path = out_dir / "report.md"
    markdown_path.write_text(markdown_report(document), encoding="utf-8")
    label = document.get("label") or document["config"]["model"]
    plots = plot_report_set([(label, document["runs"])], out_dir)
    return [json_path, markdown_path, *plots]


def write_compare_outputs(documents: list[tuple[str, dict[str, Any]]], out_dir: Path) -> list[Path]:
    """compare.md and the standard plots with one series per report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown_path = out_dir / "compare.md"
    markdown_path.write_text(compare_markdown(documents), encoding="utf-8")
    series = [(label, document["runs"]) for label, document in documents]
    return [markdown_path, *plot_report_set(series, out_dir, prefix="compare_")]
