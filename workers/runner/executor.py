"""Where the model runs: the engine core talks to an Executor, never to the model directly.

`LocalExecutor` holds the model and one ModelRunner in this process; `RayExecutor`
(cluster/ray/executor.py) ships each SchedulerOutput to a replica's Ray actors (one
ModelRunner per rank) and returns rank 0's ModelRunnerOutput; the engine does not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from oss_serve.common.logging import get_logger
from oss_serve.workers.engine.engine_config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig
from oss_serve.workers.engine.kv_cache_spec import KVCacheSpec, kv_cache_spec_for
from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput
from oss_serve.workers.model.parallel import ParallelContext
from oss_serve.workers.runner.memory_budget import kv_cache_budget_bytes, step_activation_bytes
from oss_serve.workers.runner.model_runner import ModelRunner

log = get_logger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Executor(Protocol):
    model_config: Any  # oss_serve.workers.model.config.ModelConfig

    def kv_cache_spec(self) -> KVCacheSpec: ...

    def available_kv_cache_bytes(self) -> int: ...

    def initialize_kv_cache(self, num_blocks: int) -> None: ...

    def check_request(self, params: SamplingParams) -> None:
        """Raise InvalidRequestError for a request this executor cannot run (called when
        the request is added, so it fails alone and never reaches a step)."""
        ...

    def execute_model(self, scheduled: SchedulerOutput) -> ModelRunnerOutput: ...

    def shutdown(self) -> None: ...


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
                "tensor_parallel_size/expert_parallel_size > 1 need the Ray cluster executor "
                "(oss_serve.cluster), which this process does not have; use 1 here"
            )
        self.config = config
        self.device = resolve_device(config.device)
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
        self.runner = ModelRunner(self.model, self._spec, self.device)

    def kv_cache_spec(self) -> KVCacheSpec:
        return self._spec

    def available_kv_cache_bytes(self) -> int:
        if self.config.kv_cache_memory is not None:
            return int(self.config.kv_cache_memory)
        if self.device.type != "cuda":
            return DEFAULT_CPU_KV_CACHE_BYTES
        free_bytes, total_bytes = torch.cuda.mem_get_info(self.device)
        return kv_cache_budget_bytes(
            total_bytes=total_bytes,
            used_bytes=total_bytes - free_bytes,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            activation_bytes=self._activation_bytes(),
        )

    def _activation_bytes(self) -> int:
        config = self.model_config
        return step_activation_bytes(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            max_num_batched_tokens=self.config.max_num_batched_tokens,
            max_num_seqs=self.config.max_num_seqs,
            dtype_bytes=self.dtype.itemsize,
        )

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.runner.initialize_kv_cache(num_blocks)
        log.info(
            "kv cache allocated",
            num_blocks=num_blocks,
            block_size=self._spec.block_size,
            bytes=num_blocks * self._spec.bytes_per_block,
        )

    def check_request(self, params: SamplingParams) -> None:
        """Anything runs here: processors live in this process, where the tokens are sampled."""

    def execute_model(self, scheduled: SchedulerOutput) -> ModelRunnerOutput:
        return self.runner.execute_model(scheduled)

    def shutdown(self) -> None:
        self.runner.kv_caches = []
