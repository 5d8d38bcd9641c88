"""`oss-serve bench`: load generator for any OpenAI-compatible endpoint, and `bench compare`.

Nothing here imports torch: the load generator is an outside client. `--plan-check`
loads the planner (which counts parameters with torch on the meta device) only when
asked.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from oss_serve.commands._common import fail

app = typer.Typer(
    name="bench",
    help="Measure TTFT, TPOT, ITL, throughput and goodput of an OpenAI-compatible endpoint.",
    add_completion=False,
)

_WORKLOAD_HELP = (
    "synthetic | multi-turn | long-context | tool-calling | structured | reasoning | dataset"
)
_LENGTH_HELP = "N, uniform:LO:HI, normal:MEAN:STD or exp:MEAN (default: per workload)"


def _floats(text: str, option: str) -> list[float]:
    values = []
    for item in text.split(","):
        item = item.strip().lower()
        try:
            values.append(math.inf if item in ("inf", "infinity") else float(item))
        except ValueError:
            fail(f"{option}: {item!r} is not a number")
    return values


def _load_points(
    concurrency: str | None, request_rate: str | None, max_concurrency: int | None
) -> list[Any]:
    from oss_serve.benchmarks.loadgen import LoadPoint

    if concurrency and request_rate:
        fail("give --concurrency or --request-rate, not both")
    try:
        if request_rate:
            return [
                LoadPoint("rate", request_rate=rate, max_concurrency=max_concurrency)
                for rate in _floats(request_rate, "--request-rate")
            ]
        levels = _floats(concurrency or "8", "--concurrency")
        if any(level != int(level) for level in levels):
            fail("--concurrency: whole numbers only")
        return [LoadPoint("concurrency", concurrency=int(level)) for level in levels]
    except ValueError as err:
        fail(str(err))


def _workload(
    kind: str,
    input_len: str | None,
    output_len: str | None,
    dataset: Path | None,
    turns: int,
    num_system_prompts: int,
    system_prompt_len: int,
    reasoning_effort: str | None,
    ignore_eos: bool,
) -> Any:
    from oss_serve.benchmarks.workloads import LengthDistribution, Workload, WorkloadSpec

    try:
        spec = WorkloadSpec(
            kind=kind,  # type: ignore[arg-type]  # validated in __post_init__
            input_len=LengthDistribution.parse(input_len, "--input-len") if input_len else None,
            output_len=LengthDistribution.parse(output_len, "--output-len") if output_len else None,
            turns=turns,
            num_system_prompts=num_system_prompts,
            system_prompt_len=system_prompt_len,
            reasoning_efforts=tuple(
                e.strip() for e in (reasoning_effort or "").split(",") if e.strip()
            ),
            dataset_path=dataset,
            ignore_eos=ignore_eos,
        )
        return Workload(spec)
    except ValueError as err:
        fail(str(err))


def _extra_body(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        fail(f"--extra-body: not JSON ({err.msg})")
    if not isinstance(value, dict):
        fail("--extra-body: must be a JSON object")
    return value


@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Server URL, e.g. http://127.0.0.1:8000")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name to request.")] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="Sent as Authorization: Bearer.")
    ] = None,
    workload: Annotated[str, typer.Option("--workload", help=_WORKLOAD_HELP)] = "synthetic",
    input_len: Annotated[str | None, typer.Option("--input-len", help=_LENGTH_HELP)] = None,
    output_len: Annotated[str | None, typer.Option("--output-len", help=_LENGTH_HELP)] = None,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="JSONL of {messages: [...]} rows.")
    ] = None,
    turns: Annotated[int, typer.Option("--turns", help="Turns per multi-turn chat.")] = 4,
    num_system_prompts: Annotated[
        int, typer.Option("--num-system-prompts", help="Shared system prompts (multi-turn).")
    ] = 4,
    system_prompt_len: Annotated[
        int, typer.Option("--system-prompt-len", help="Tokens per system prompt.")
    ] = 1024,
    reasoning_effort: Annotated[
        str | None, typer.Option("--reasoning-effort", help="low,medium,high (one per request).")
    ] = None,
    ignore_eos: Annotated[
        bool, typer.Option("--ignore-eos", help="Send ignore_eos (vLLM) for exact lengths.")
    ] = False,
    concurrency: Annotated[
        str | None, typer.Option("--concurrency", help="Fixed concurrency; 1,4,16 = sweep.")
    ] = None,
    request_rate: Annotated[
        str | None,
        typer.Option("--request-rate", help="Poisson sessions/s; 2,4,inf = sweep."),
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", help="In-flight cap in rate mode.")
    ] = None,
    num_requests: Annotated[
        int | None, typer.Option("--num-requests", help="Requests per load point (def. 200).")
    ] = None,
    duration_s: Annotated[
        float | None, typer.Option("--duration-s", help="Seconds per load point instead.")
    ] = None,
    warmup_requests: Annotated[int, typer.Option("--warmup-requests")] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Per request.")] = 600.0,
    slo_ttft_ms: Annotated[float | None, typer.Option("--slo-ttft-ms")] = None,
    slo_tpot_ms: Annotated[float | None, typer.Option("--slo-tpot-ms")] = None,
    slo_e2e_ms: Annotated[float | None, typer.Option("--slo-e2e-ms")] = None,
    extra_body: Annotated[
        str | None, typer.Option("--extra-body", help="JSON merged into every request.")
    ] = None,
    no_stream_usage: Annotated[
        bool, typer.Option("--no-stream-usage", help="Do not ask for the usage chunk.")
    ] = False,
    metrics_url: Annotated[
        str | None,
        typer.Option(
            "--metrics-url",
            help="Prometheus /metrics to read prefix-cache counters from around each load "
            "point (default: <base-url>/metrics; 'none' skips).",
        ),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Write result.json, report.md, plots.")
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="Name of this run.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    plan_check: Annotated[
        bool, typer.Option("--plan-check", help="Print the planner's prediction beside it.")
    ] = False,
    gpu: Annotated[str | None, typer.Option("--gpu", help="Plan check: GPU name.")] = None,
    num_gpus: Annotated[int, typer.Option("--num-gpus", help="Plan check: TP size.")] = 1,
    plan_model: Annotated[
        str | None, typer.Option("--plan-model", help="Plan check: preset/dir (def. --model).")
    ] = None,
    weights: Annotated[str, typer.Option("--weights", help="Plan check: mxfp4|bf16.")] = "mxfp4",
    max_model_len: Annotated[int | None, typer.Option("--max-model-len")] = None,
    gpu_memory_utilization: Annotated[float, typer.Option("--gpu-memory-utilization")] = 0.9,
    plan_engine: Annotated[
        str, typer.Option("--plan-engine", help="Plan check: vllm | oss-serve.")
    ] = "vllm",
) -> None:
    """Run a load test (flags below), or `bench compare A.json B.json` to compare runs."""
    if ctx.invoked_subcommand is not None:
        return
    if not base_url or not model:
        fail("--base-url and --model are required (or use `oss-serve bench compare`)")
    if plan_check and not gpu:
        fail("--plan-check needs --gpu (and --num-gpus) of the deployment")
    from oss_serve.benchmarks.loadgen import Budget
    from oss_serve.benchmarks.metrics import SLO
    from oss_serve.benchmarks.stream_client import Endpoint

    try:
        endpoint = Endpoint.from_base_url(
            base_url,
            model,
            api_key=api_key,
            timeout_s=timeout_s,
            extra_body=_extra_body(extra_body),
            stream_usage=not no_stream_usage,
        )
        budget = Budget(
            num_requests=num_requests if num_requests or duration_s else 200,
            duration_s=duration_s,
        )
    except ValueError as err:
        fail(str(err))
    points = _load_points(concurrency, request_rate, max_concurrency)
    work = _workload(
        workload,
        input_len,
        output_len,
        dataset,
        turns,
        num_system_prompts,
        system_prompt_len,
        reasoning_effort,
        ignore_eos,
    )
    slo = SLO(ttft_ms=slo_ttft_ms, tpot_ms=slo_tpot_ms, e2e_ms=slo_e2e_ms)
    scrape_url = _metrics_url(metrics_url, base_url)
    document = _run(
        endpoint, work, points, budget, seed, warmup_requests, slo, label, progress, scrape_url
    )
    if plan_check:
        from oss_serve.benchmarks.plan_check import plan_check_section

        try:
            document["plan_check"] = plan_check_section(
                document,
                model=plan_model or model,
                gpu=gpu or "",
                num_gpus=num_gpus,
                weights=weights,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                engine=plan_engine,
            )
        except (ValueError, FileNotFoundError) as err:
            fail(f"--plan-check: {err}")
    _emit(document, output_dir, json_out)


def _metrics_url(given: str | None, base_url: str) -> str | None:
    from oss_serve.benchmarks.server_metrics import metrics_url_for

    if given is None:
        return metrics_url_for(base_url)
    if given.strip().lower() == "none":
        return None
    if not given.startswith(("http://", "https://")):
        fail(f"--metrics-url: {given!r} must start with http:// or https:// (or be 'none')")
    return given


def _run(
    endpoint: Any,
    workload: Any,
    points: list[Any],
    budget: Any,
    seed: int,
    warmup_requests: int,
    slo: Any,
    label: str | None,
    show_progress: bool,
    metrics_url: str | None,
) -> dict[str, Any]:
    from oss_serve.benchmarks.loadgen import run_sweep
    from oss_serve.benchmarks.progress import BenchProgress
    from oss_serve.benchmarks.report import build_report, load_average

    started_unix_s = time.time()
    load_average_start = load_average()
    with BenchProgress(budget, enabled=show_progress) as bar:
        results = asyncio.run(
            run_sweep(
                endpoint,
                workload,
                points,
                budget,
                seed,
                warmup_requests=warmup_requests,
                on_done=bar.request_done,
                on_point=bar.start_point,
                metrics_url=metrics_url,
            )
        )
    return build_report(
        endpoint=endpoint,
        workload=workload,
        budget=budget,
        seed=seed,
        warmup_requests=warmup_requests,
        slo=slo,
        results=results,
        started_unix_s=started_unix_s,
        label=label,
        load_average_start=load_average_start,
    )


def _emit(document: dict[str, Any], output_dir: Path | None, json_out: bool) -> None:
    from oss_serve.benchmarks.outputs import write_bench_outputs
    from oss_serve.benchmarks.report import markdown_report

    if output_dir is not None:
        for path in write_bench_outputs(document, output_dir):
            typer.echo(f"wrote {path}", err=True)
    if json_out:
        typer.echo(json.dumps(document, indent=1))
    else:
        typer.echo(markdown_report(document))


@app.command("compare")
def compare(
    reports: Annotated[list[Path], typer.Argument(help="Two or more result.json files.")],
    labels: Annotated[
        str | None, typer.Option("--labels", help="Comma-separated names, one per report.")
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Write compare.md and plots here.")
    ] = None,
) -> None:
    """Put two or more bench runs side by side (ratios to the first) and plot them together."""
    from oss_serve.benchmarks.outputs import write_compare_outputs
    from oss_serve.benchmarks.report import ReportError, compare_markdown, load_report

    if len(reports) < 2:
        fail("compare needs at least two reports")
    names = [n.strip() for n in labels.split(",")] if labels else []
    if names and len(names) != len(reports):
        fail(f"--labels: {len(names)} names for {len(reports)} reports")
    try:
        documents = [load_report(path) for path in reports]
    except ReportError as err:
        fail(str(err))
    named = [
        (names[i] if names else doc.get("label") or path.parent.name or path.stem, doc)
        for i, (path, doc) in enumerate(zip(reports, documents, strict=True))
    ]
    if output_dir is not None:
        for path in write_compare_outputs(named, output_dir):
            typer.echo(f"wrote {path}", err=True)
    typer.echo(compare_markdown(named))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="bench")
