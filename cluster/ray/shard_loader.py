"""Load one rank's shard of the model and keep the record of every checkpoint slice it read.

The model's loader already reads only this rank's slices (safetensors `get_slice`); the
record makes that visible: a worker reports which tensor rows it read and how many bytes,
so a test (or an operator) can check that an expert-parallel rank never touched another
rank's experts, and the replica logs how much each rank pulled off the disk.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from oss_serve.workers.model.config import PRESETS, load_config
from oss_serve.workers.model.model import ExpertsFormat, GptOss
from oss_serve.workers.model.parallel import ParallelContext
from oss_serve.workers.model.weights import (
    CheckpointFormat,
    RandomSource,
    SafetensorsSource,
    TensorSource,
    experts_format_of,
    find_checkpoint,
    load_weights,
)


@dataclass(frozen=True)
class TensorRead:
    """Rows [start, stop) along `dim` of checkpoint tensor `key` (stop -1: to the end)."""

    key: str
    dim: int
    start: int
    stop: int
    num_bytes: int


class RecordingSource:
    """A TensorSource that passes reads through and remembers each one."""

    def __init__(self, inner: TensorSource) -> None:
        self.inner = inner
        self.reads: list[TensorRead] = []

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.inner.shapes()

    def itemsize(self, key: str) -> int:
        return self.inner.itemsize(key)

    def read(self, key: str, dim: int, start: int, stop: int) -> torch.Tensor:
        tensor = self.inner.read(key, dim, start, stop)
        self.reads.append(TensorRead(key, dim, start, stop, tensor.numel() * tensor.element_size()))
        return tensor


def load_shard(
    model_ref: str,
    *,
    parallel: ParallelContext,
    device: torch.device,
    dtype: torch.dtype,
    experts_format: ExpertsFormat | Literal["auto"] = "auto",
    seed: int = 0,
) -> tuple[GptOss, list[TensorRead]]:
    """This rank's GptOss from a checkpoint folder (or a preset: seeded random weights)."""
    source: Any
    if model_ref in PRESETS and not Path(model_ref).exists():
        config = PRESETS[model_ref]
        ckpt_format: CheckpointFormat = "hf-dense"
        stored: ExpertsFormat = "mxfp4"  # what load_model keeps for a preset
        source = contextlib.nullcontext(RandomSource(config, seed))
    else:
        folder = Path(model_ref)
        config = load_config(folder)
        ckpt_format, files = find_checkpoint(folder)
        stored = experts_format_of(ckpt_format)
        source = SafetensorsSource(files)
    fmt: ExpertsFormat = stored if experts_format == "auto" else experts_format
    model = GptOss(config, parallel, experts_format=fmt, dtype=dtype, device=device)
    with source as opened:
        recorder = RecordingSource(opened)
        load_weights(model, recorder, ckpt_format)
    return model.eval(), recorder.reads


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer the rank holds (MXFP4 blocks included)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
