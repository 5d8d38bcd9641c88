"""Everything that shapes one engine, in one dataclass (vLLM's argument names where they exist)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from oss_serve.workers.engine.block_pool import KVCacheEvent
from oss_serve.workers.engine.sampling_params import InvalidRequestError

KVEventSink = Callable[[list[KVCacheEvent]], None]

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


@dataclass
class EngineConfig:
    model: str | None = None  # checkpoint folder or preset name
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    experts_format: str = "auto"  # auto (the checkpoint's) | dense | mxfp4
    device: str = "auto"  # auto | cpu | cuda[:i]
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    block_size: int = 16
    enable_prefix_caching: bool = True
    # keep the sliding window before every N-th token cached too (0 = only the prompt's end)
    sliding_retention_interval: int = 0
    gpu_memory_utilization: float = 0.9
    kv_cache_memory: int | None = None  # bytes of KV cache (CPU; overrides the GPU fraction)
    num_kv_blocks: int | None = None  # exact pool size (tests); overrides the memory budget
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    seed: int = 0
    tensor_parallel_size: int = 1
    expert_parallel_size: int = 1
    kv_event_sink: KVEventSink | None = None
    skip_tokenizer_init: bool = False
    # schedule step N+1 while step N runs (None: on when a local model runs on CUDA)
    async_scheduling: bool | None = None
    enforce_eager: bool = False  # no CUDA graphs: every decode step runs eagerly
    cuda_graph_sizes: list[int] | None = None  # decode batch sizes to capture (None: vLLM's)
    # pad decode batches to the capture sizes even without graphs (tests of the padding)
    pad_decode_batches: bool = False
    cpu_threads: int = 0  # CPU forward threads; 0: the cores other processes leave idle
    # LoRA adapters, vLLM's names: many adapters on this one model, chosen per request
    enable_lora: bool = False
    max_loras: int = 1  # adapters in device slots = distinct adapters in one step at most
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # adapters kept in host memory (default: max_loras)
    lora_modules: dict[str, str] = field(default_factory=dict)  # name -> PEFT folder, at start

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.tensor_parallel_size < 1 or self.expert_parallel_size < 1:
            raise ValueError("tensor_parallel_size and expert_parallel_size must be >= 1")
        if self.max_loras < 1 or self.max_lora_rank < 1:
            raise ValueError("max_loras and max_lora_rank must be >= 1")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )
        if self.lora_modules and not self.enable_lora:
            raise ValueError("lora_modules need enable_lora=True")
        if self.cpu_threads < 0:
            raise ValueError(
                f"cpu_threads must be >= 0 (0: adapt to the load), got {self.cpu_threads}"
            )

    @property
    def cpu_loras(self) -> int:
        """Adapters the host tier keeps (max_cpu_loras, at least max_loras)."""
        return self.max_cpu_loras or self.max_loras

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        """Build from keyword arguments; an unknown one is an error naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InvalidRequestError(
                f"unknown engine argument(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                field=unknown[0],
            )
        return cls(**kwargs)
