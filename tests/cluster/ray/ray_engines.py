"""Ray replicas for the cluster tests: a checkpoint with clear greedy argmaxes, and
replicas started lazily by layout name, shared by a module's tests (Ray: conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from oss_serve.cluster.ray.engine import RayEngine
from oss_serve.cluster.ray.executor import RayEngineOptions
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.model.checkpoint import save_checkpoint
from oss_serve.workers.model.config import PRESETS, ModelConfig
from oss_serve.workers.model.model import GptOss
from oss_serve.workers.model.weights import init_random_weights

Layout = tuple[int, int, bool]  # tensor_parallel_size, expert_parallel_size, experts over all
# gpt-oss-tiny with a small vocabulary: 4 q heads, 2 KV heads, 8 experts (top 4), 4 layers
# alternating a 16-token sliding window and full attention.
SMALL_VOCAB_CONFIG = PRESETS["gpt-oss-tiny"].with_(vocab_size=512)
ENGINE_ARGS = {
    "dtype": "float32",
    "device": "cpu",
    "experts_format": "dense",
    "block_size": 4,
    "kv_cache_memory": 2 << 20,
    "max_model_len": 160,
    "max_num_batched_tokens": 64,  # long prompts are prefilled in chunks
    "skip_tokenizer_init": True,
}


def write_checkpoint(config: ModelConfig, folder: Path, seed: int) -> Path:
    """An HF-MXFP4 checkpoint (safetensors) with weights large enough for clear argmaxes."""
    model = GptOss(config, experts_format="dense", dtype=torch.float32)
    init_random_weights(model, seed=seed, std=0.2)
    save_checkpoint(model, config, folder, format="hf-mxfp4")
    return folder


class RayEnginePool:
    """RayEngines of one checkpoint, started on first use and shut down together."""

    def __init__(
        self, checkpoint: Path, engine_args: dict[str, Any], layouts: dict[str, Layout]
    ) -> None:
        self.checkpoint = checkpoint
        self.engine_args = engine_args
        self.layouts = layouts
        self.started: dict[str, RayEngine] = {}

    async def get(self, name: str) -> RayEngine:
        if name not in self.started:
            tp, ep, across = self.layouts[name]
            config = EngineConfig(
                model=str(self.checkpoint),
                tensor_parallel_size=tp,
                expert_parallel_size=ep,
                **self.engine_args,
            )
            options = RayEngineOptions(
                experts_across_all_ranks=across, cpus_per_rank=0.5, step_timeout_s=60
            )
            replica = RayEngine(config, options=options, health_interval_s=0.5)
            await replica.start()
            self.started[name] = replica
        return self.started[name]

    async def shutdown(self) -> None:
        for replica in self.started.values():
            await replica.shutdown()
