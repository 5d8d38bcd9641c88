"""`oss-serve plan`: capacity planning for GPU pools (memory, max concurrency, speed, cost)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from oss_serve.commands._common import fail


def plan(
    model: Annotated[
        str, typer.Option("--model", help="gpt-oss-20b | gpt-oss-120b | checkpoint DIR.")
    ] = "gpt-oss-20b",
    gpu: Annotated[
        str | None, typer.Option("--gpu", help="Catalog name (see --list-gpus), e.g. h100.")
    ] = None,
    num_gpus: Annotated[
        int, typer.Option("--num-gpus", help="GPUs in tensor parallel (divides 8).")
    ] = 1,
    max_model_len: Annotated[
        int | None, typer.Option("--max-model-len", help="Default: the model's 131072.")
    ] = None,
    weights: Annotated[str, typer.Option("--weights", help="mxfp4 | bf16.")] = "mxfp4",
    gpu_memory_utilization: Annotated[
        float, typer.Option("--gpu-memory-utilization", help="Share of memory vLLM may use.")
    ] = 0.9,
    price_per_hour: Annotated[
        float | None,
        typer.Option("--price-per-hour", help="USD per GPU-hour (default: catalog price)."),
    ] = None,
    input_len: Annotated[
        int, typer.Option("--input-len", help="Prompt tokens of the costed workload.")
    ] = 1024,
    output_len: Annotated[
        int, typer.Option("--output-len", help="Output tokens of the costed workload.")
    ] = 1024,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option("--max-num-batched-tokens", help="Default: vLLM's for the GPU.")
    ] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option("--max-num-seqs", help="Default: vLLM's for the GPU.")
    ] = None,
    kv_cache_dtype: Annotated[str, typer.Option("--kv-cache-dtype", help="auto | fp8.")] = "auto",
    enforce_eager: Annotated[
        bool,
        typer.Option(
            "--enforce-eager", help="No CUDA graphs (vLLM sizes the cache before capturing)."
        ),
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine", help="vllm (what published deployments report) | oss-serve (this stack)."
        ),
    ] = "vllm",
    moe_backend: Annotated[
        str,
        typer.Option(
            "--moe-backend",
            help="vLLM MXFP4 MoE kernel: auto (by compute capability) | marlin | triton | "
            "flashinfer-trtllm.",
        ),
    ] = "auto",
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Every catalog GPU x {1,2,4,8} x both models.")
    ] = False,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Sweep: write table, JSON and plot here.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (snake_case keys).")] = False,
    list_gpus: Annotated[bool, typer.Option("--list-gpus", help="Print the GPU catalog.")] = False,
    check_sources: Annotated[
        bool,
        typer.Option(
            "--check-sources", help="Compare with published vLLM start-up logs of gpt-oss."
        ),
    ] = False,
) -> None:
    """Predict memory, max concurrency, speed and cost of a deployment on a GPU type."""
    from oss_serve.benchmarks.gpu_catalog import UnknownGPUError
    from oss_serve.benchmarks.planner import PlanOptions

    if list_gpus:
        _print_catalog(json_out)
        return
    if check_sources:
        _check_sources(output_dir, json_out)
        return
    if kv_cache_dtype not in ("auto", "fp8"):
        fail(f"--kv-cache-dtype: {kv_cache_dtype!r} is not auto or fp8")
    try:
        options = PlanOptions(
            num_gpus=num_gpus,
            max_model_len=max_model_len,
            weights=weights,  # type: ignore[arg-type]  # validated by PlanOptions
            gpu_memory_utilization=gpu_memory_utilization,
            price_per_hour=price_per_hour,
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
            kv_cache_dtype=kv_cache_dtype,  # type: ignore[arg-type]
            enforce_eager=enforce_eager,
            input_len=input_len,
            output_len=output_len,
            engine=engine,  # type: ignore[arg-type]  # validated by PlanOptions
            moe_backend=moe_backend,
        )
        if sweep:
            _sweep(options, output_dir, json_out)
            return
        if gpu is None:
            fail("--gpu is required (or --sweep / --list-gpus)")
        _single(model, gpu, options, json_out)
    except (ValueError, FileNotFoundError, UnknownGPUError) as err:
        fail(str(err))


def _check_sources(output_dir: Path | None, json_out: bool) -> None:
    from dataclasses import asdict

    from oss_serve.benchmarks.plan_sources import check_sources, sources_markdown

    checks = check_sources()
    table = sources_markdown(checks)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "vllm_sources_check.md").write_text(table, encoding="utf-8")
        typer.echo(f"wrote {output_dir / 'vllm_sources_check.md'}", err=True)
    if json_out:
        typer.echo(json.dumps([asdict(c) | {"ok": c.ok} for c in checks], indent=1))
    else:
        typer.echo(table)
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


def _single(model: str, gpu: str, options: Any, json_out: bool) -> None:
    from oss_serve.benchmarks.capacity import markdown_plan, plan_deployment

    result = plan_deployment(model, gpu, options)
    if json_out:
        typer.echo(json.dumps(result, indent=1))
    else:
        typer.echo(markdown_plan(result))
    if result["status"] == "does_not_fit":
        raise typer.Exit(1)


def _sweep(options: Any, output_dir: Path | None, json_out: bool) -> None:
    from oss_serve.benchmarks.plan_sweep import plot_sweep, sweep_markdown, sweep_plans, sweep_rows

    plans = sweep_plans(options)
    table = sweep_markdown(plans)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "plan_sweep.md").write_text(table, encoding="utf-8")
        (output_dir / "plan_sweep.json").write_text(
            json.dumps(sweep_rows(plans), indent=1) + "\n", encoding="utf-8"
        )
        plot = plot_sweep(plans, output_dir / "plan_sweep.png")
        typer.echo(f"wrote {output_dir / 'plan_sweep.md'}, plan_sweep.json, {plot.name}", err=True)
    typer.echo(json.dumps(sweep_rows(plans), indent=1) if json_out else table)


def _print_catalog(json_out: bool) -> None:
    from oss_serve.benchmarks.gpu_catalog import CATALOG

    if json_out:
        typer.echo(json.dumps([gpu.to_json() for gpu in CATALOG.values()], indent=1))
        return
    typer.echo("| gpu | description | MiB | GB/s | bf16 TF | fp8 TF | fp4 TF | link | $/h |")
    typer.echo("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for g in CATALOG.values():
        typer.echo(
            f"| {g.name} | {g.description} | {g.memory_mib} | {g.bandwidth_bytes_per_s / 1e9:g} "
            f"| {g.bf16_flops / 1e12:g} | {g.fp8_flops / 1e12:g} | {g.fp4_flops / 1e12:g} "
            f"| {g.interconnect} | {g.usd_per_hour:.2f} |"
        )


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
