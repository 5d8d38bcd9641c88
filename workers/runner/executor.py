"""Where the model runs: the engine core talks to an Executor, never to the model directly.

`LocalExecutor` holds the model and one ModelRunner in this process; `RayExecutor`
(cluster/ray/executor.py) ships each SchedulerOutput to a replica's Ray actors (one
ModelRunner per rank) and returns rank 0's ModelRunnerOutput; the engine does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch

from oss_serve.common.logging import get_logger
from oss_serve.workers.engine.engine_config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig
from oss_serve.workers.engine.kv_cache_spec import KVCacheSpec, kv_cache_spec_for
from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput
from oss_serve.workers.model.parallel import ParallelContext
from oss_serve.workers.runner.cuda_graphs import capture_sizes
from oss_serve.workers.runner.memory_profile import profile_cuda_memory
from oss_serve.workers.runner.model_runner import DecodePadding, ModelRunner

log = get_logger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Executor(Protocol):
    model_config: Any  # oss_serve.workers.model.config.ModelConfig
    device_type: str  # where the model runs: "cuda" or "cpu"

    def kv_cache_spec(self) -> KVCacheSpec: ...

    def available_kv_cache_bytes(self) -> int: ...

    def initialize_kv_cache(self, num_blocks: int) -> None: ...

    def check_request(self, params: SamplingParams) -> None:
        """Raise InvalidRequestError for a request this executor cannot run (called when
        the request is added, so it fails alone and never reaches a step)."""
        ...

    def execute_model(self, scheduled: SchedulerOutput) -> ModelRunnerOutput: ...

    def shutdown(self) -> None: ...


# Starts an engine's executor for a config: LocalExecutor (the model in this process) or a
# TP/EP engine's ranks (cluster/ray/executor.py's RayExecutor); LLM takes one.
ExecutorFactory = Callable[[EngineConfig], Executor]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}")
    return _DTYPES[dtype]


def cpu_experts_format(
    config: EngineConfig, device: torch.device, dtype: torch.dtype, parallel: ParallelContext
) -> str:
    """On CPU, "auto" decodes a checkpoint's MXFP4 experts once at load (bit-exact) when the
    dense copy takes at most half the free memory: the torch path would otherwise decode
    every chosen expert at every step. (Presets keep theirs: their random weights differ.)"""
    if config.experts_format != "auto" or device.type != "cpu" or config.model is None:
        return config.experts_format
    if not Path(config.model).is_dir():
        return config.experts_format
    import psutil

    from oss_serve.workers.model.config import load_config

    model = load_config(config.model)
    expert_params = 3 * model.hidden_size * model.intermediate_size * model.num_local_experts
    dense_bytes = model.num_hidden_layers * expert_params * dtype.itemsize // parallel.ep_size
    return "dense" if dense_bytes <= psutil.virtual_memory().available // 2 else "auto"


def decode_padding(
    config: EngineConfig, device: torch.device, model_config: Any
) -> DecodePadding | None:
    """CUDA graphs on CUDA unless enforce_eager; padding alone when asked for (tests)."""
    graphs = device.type == "cuda" and not config.enforce_eager
    if not graphs and not config.pad_decode_batches:
        return None
    max_model_len = int(config.max_model_len or model_config.max_position_embeddings)
    return DecodePadding(
        sizes=capture_sizes(config.max_num_seqs, config.cuda_graph_sizes),
        max_blocks=-(-max_model_len // config.block_size),
        graphs=graphs,
    )


class LocalExecutor:
    """The model and its runner in this process: the whole model, or one rank's shard of it
    when `parallel` says which (the cluster's worker actors run one LocalExecutor each)."""

    def __init__(
        self,
        config: EngineConfig,
        model: Any | None = None,
        parallel: ParallelContext | None = None,
    ) -> None:
        parallel = parallel or ParallelContext()
        sharded = config.tensor_parallel_size > 1 or config.expert_parallel_size > 1
        if sharded and parallel.is_single:
            raise ValueError(
                "tensor_parallel_size/expert_parallel_size > 1 need an executor that starts "
                "the ranks (`from oss_serve import LLM` uses Ray's); this one runs the whole "
                "model in this process"
            )
        self.config = config
        self.device = resolve_device(config.device)
        self.device_type = self.device.type
        self.dtype = resolve_dtype(config.dtype, self.device)
        if model is None:
            from oss_serve.workers.model.weights import load_model

            if config.model is None:
                raise ValueError("EngineConfig.model is required (a checkpoint folder or preset)")
            experts_format = cpu_experts_format(config, self.device, self.dtype, parallel)
            model = load_model(
                config.model,
                device=self.device,
                dtype=self.dtype,
                experts_format=experts_format,  # type: ignore[arg-type]
                seed=config.seed,
                parallel=parallel,
            )
        self.model = model.eval()
        self.model_config = model.config
        self._spec = kv_cache_spec_for(
            self.model_config,
            block_size=config.block_size,
            dtype=self.dtype,
            tp_size=parallel.tp_size,
        )
        lora = None
        if config.enable_lora:
            from oss_serve.workers.lora.runtime import LoRARuntime

            lora = LoRARuntime(
                self.model,
                max_loras=config.max_loras,
                max_lora_rank=config.max_lora_rank,
                max_cpu_loras=config.cpu_loras,
            )
        padding = decode_padding(config, self.device, model.config)
        self.runner = ModelRunner(
            self.model, self._spec, self.device, padding, lora, cpu_threads=config.cpu_threads
        )
        self._steps: ThreadPoolExecutor | None = None  # the runner's thread (async scheduling)

    def kv_cache_spec(self) -> KVCacheSpec:
        return self._spec

    def available_kv_cache_bytes(self) -> int:
        """kv_cache_memory if set; on CUDA what a profiling step leaves (memory_profile.py)."""
        if self.config.kv_cache_memory is not None:
            return int(self.config.kv_cache_memory)
        if self.device.type != "cuda":
            return DEFAULT_CPU_KV_CACHE_BYTES
        profile = profile_cuda_memory(
            self.model,
            self.config.max_num_batched_tokens,
            self.config.max_num_seqs,
            self.device,
            self.config.gpu_memory_utilization,
        )
        log.info(profile.log_line())
        return profile.kv_cache_bytes

    def initialize_kv_cache(self, num_blocks: int) -> None:
        """Allocate the cache, then capture the decode graphs (they read its tensors)."""
        self.runner.initialize_kv_cache(num_blocks)
        log.info(
            "kv cache allocated",
            num_blocks=num_blocks,
            block_size=self._spec.block_size,
            bytes=num_blocks * self._spec.bytes_per_block,
        )
        if seconds := self.runner.capture_graphs():
            sizes = self.runner.padding.sizes if self.runner.padding else []
            log.info(f"Graph capturing finished in {seconds:.0f} secs", sizes=sizes)

    def check_request(self, params: SamplingParams) -> None:
        """Anything runs here: processors live in this process, where the tokens are sampled."""

    def execute_model(self, scheduled: SchedulerOutput) -> ModelRunnerOutput:
        return self.runner.execute_model(scheduled)

    def submit(self, scheduled: SchedulerOutput) -> Future[ModelRunnerOutput]:
        """Queue a step on the runner's own thread; steps run one at a time, in order, so
        the caller schedules the next step while this one runs (async scheduling)."""
        if self._steps is None:
            self._steps = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-runner")
        return self._steps.submit(self.runner.execute_model, scheduled)

    def shutdown(self) -> None:
        if self._steps is not None:
            self._steps.shutdown(wait=True, cancel_futures=True)
            self._steps = None
        self.runner.kv_caches = []
