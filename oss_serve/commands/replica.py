"""`oss-serve replica`: one model replica pulling its requests from Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from oss_serve.commands._common import (
    ConfigOption,
    EnableLoraOption,
    LoraModulesOption,
    MaxCpuLorasOption,
    MaxLoraRankOption,
    MaxLorasOption,
    fail,
    lora_flags,
    settings_from_flags,
)


def replica(
    config: ConfigOption = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Checkpoint folder or preset name.")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="redis://[:password@]host:port/db")
    ] = None,
    replica_id: Annotated[
        str | None, typer.Option("--replica-id", help="Default: hostname-pid.")
    ] = None,
    pool: Annotated[
        str | None, typer.Option("--pool", help="GPU pool label for the registry.")
    ] = None,
    served_model_name: Annotated[str | None, typer.Option("--served-model-name")] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="Redis key namespace.")
    ] = None,
    max_model_len: Annotated[int | None, typer.Option("--max-model-len")] = None,
    block_size: Annotated[int | None, typer.Option("--block-size")] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="auto, bfloat16, float16, float32.")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda.")] = None,
    kv_cache_memory: Annotated[
        int | None, typer.Option("--kv-cache-memory", help="KV bytes (CPU).")
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option("--gpu-memory-utilization")
    ] = None,
    max_num_seqs: Annotated[int | None, typer.Option("--max-num-seqs")] = None,
    tensor_parallel_size: Annotated[int | None, typer.Option("--tensor-parallel-size")] = None,
    expert_parallel_size: Annotated[int | None, typer.Option("--expert-parallel-size")] = None,
    enforce_eager: Annotated[
        bool | None, typer.Option("--enforce-eager", help="No CUDA graphs for decode.")
    ] = None,
    enable_lora: EnableLoraOption = None,
    lora_modules: LoraModulesOption = None,
    max_loras: MaxLorasOption = None,
    max_lora_rank: MaxLoraRankOption = None,
    max_cpu_loras: MaxCpuLorasOption = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option("--tls-ca", help="PEM CA that signed the routers' certificates: TLS link."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="This replica's PEM certificate (mTLS).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="PEM key of --tls-cert.")
    ] = None,
    tls_server_name: Annotated[
        str | None,
        typer.Option("--tls-server-name", help="Name in the routers' certificates to expect."),
    ] = None,
) -> None:
    """Run a model replica that serves the requests routed to it through Redis."""
    from oss_serve.cluster.replica.host import run_replica

    settings = settings_from_flags(
        config,
        model=model,
        redis_url=redis_url,
        replica_id=replica_id,
        replica_pool=pool,
        served_model_name=served_model_name,
        redis_namespace=namespace,
        max_model_len=max_model_len,
        block_size=block_size,
        dtype=dtype,
        device=device,
        kv_cache_memory=kv_cache_memory,
        gpu_memory_utilization=gpu_memory_utilization,
        max_num_seqs=max_num_seqs,
        tensor_parallel_size=tensor_parallel_size,
        expert_parallel_size=expert_parallel_size,
        enforce_eager=enforce_eager,
        **lora_flags(enable_lora, lora_modules, max_loras, max_lora_rank, max_cpu_loras),
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_server_name=tls_server_name,
    )
    try:
        code = asyncio.run(run_replica(settings))
    except (ValueError, OSError, FileNotFoundError) as err:
        fail(str(err))
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("replica")(replica)
