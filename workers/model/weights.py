"""Load gpt-oss weights: HF MXFP4, HF dense, OpenAI original; each rank reads only its slice.

The one place that knows checkpoint tensor names. A checkpoint is read through a
TensorSource (safetensors files, an in-memory dict, or deterministic random numbers),
tensor by tensor: each of the model's tensors is filled from a slice of one checkpoint
tensor (safetensors `get_slice`, so a rank never reads what it does not hold), converted on
the way (transposed, MXFP4 decoded or encoded, cast), copied in and dropped.
"""

from __future__ import annotations

import contextlib
import json
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from safetensors import safe_open

from oss_serve.common.logging import get_logger
from oss_serve.kernels.mxfp4 import dequantize_mxfp4, quantize_mxfp4
from oss_serve.workers.model.config import PRESETS, ModelConfig, load_config, original_config_file
from oss_serve.workers.model.model import ExpertsFormat, GptOss
from oss_serve.workers.model.parallel import ParallelContext, ShardRange

log = get_logger(__name__)

CheckpointFormat = Literal["hf-mxfp4", "hf-dense", "original"]
ProgressCallback = Callable[[int, int], None]  # (bytes read so far, bytes to read)
INDEX_FILE = "model.safetensors.index.json"
_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "U8": 1, "I8": 1, "I32": 4, "I64": 8}
_ORIGINAL_NAMES = {
    "embed_tokens.weight": "embedding.weight",
    "lm_head.weight": "unembedding.weight",
    "norm.weight": "norm.scale",
    "input_layernorm.weight": "attn.norm.scale",
    "post_attention_layernorm.weight": "mlp.norm.scale",
    "self_attn.sinks": "attn.sinks",
    "self_attn.o_proj.weight": "attn.out.weight",
    "self_attn.o_proj.bias": "attn.out.bias",
    "mlp.router.weight": "mlp.gate.weight",
    "mlp.router.bias": "mlp.gate.bias",
    "mlp.experts.gate_up_proj_blocks": "mlp.mlp1_weight.blocks",
    "mlp.experts.gate_up_proj_scales": "mlp.mlp1_weight.scales",
    "mlp.experts.gate_up_proj_bias": "mlp.mlp1_bias",
    "mlp.experts.down_proj_blocks": "mlp.mlp2_weight.blocks",
    "mlp.experts.down_proj_scales": "mlp.mlp2_weight.scales",
    "mlp.experts.down_proj_bias": "mlp.mlp2_bias",
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names the offending tensors."""


# --- where each tensor lives ---------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A model tensor (full, unsharded) inside a checkpoint."""

    key: str  # checkpoint tensor name
    offset: int = 0  # rows before it in a fused checkpoint tensor (original qkv)
    transposed: bool = False  # stored as [E, in, out] (HF dense experts)


def experts_format_of(fmt: CheckpointFormat) -> ExpertsFormat:
    return "dense" if fmt == "hf-dense" else "mxfp4"


def full_shapes(config: ModelConfig, experts_format: ExpertsFormat) -> dict[str, torch.Size]:
    """Our tensor names and full shapes, read off the real model built on the meta device."""
    model = GptOss(config, experts_format=experts_format, device="meta")
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def source_of(name: str, config: ModelConfig, fmt: CheckpointFormat) -> Source:
    """Where our tensor `name` (in the checkpoint's experts format) lives in a checkpoint."""
    if fmt != "original":
        key = name if name == "lm_head.weight" else f"model.{name}"
        dense_expert = fmt == "hf-dense" and name.endswith(("gate_up_proj", "down_proj"))
        return Source(key, transposed=dense_expert)
    if not name.startswith("layers."):
        return Source(_ORIGINAL_NAMES[name])
    _, layer, leaf = name.split(".", 2)
    prefix = f"block.{layer}."
    for index, proj in enumerate(_QKV):
        if leaf.startswith(proj):
            rows = (0, config.q_size, config.q_size + config.kv_size)[index]
            return Source(prefix + "attn.qkv." + leaf.rsplit(".", 1)[1], offset=rows)
    return Source(prefix + _ORIGINAL_NAMES[leaf])


def checkpoint_shapes(config: ModelConfig, fmt: CheckpointFormat) -> dict[str, tuple[int, ...]]:
    """Every tensor a complete checkpoint of `fmt` holds, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in full_shapes(config, experts_format_of(fmt)).items():
        src = source_of(name, config, fmt)
        dims = list(shape)
        if src.transposed:
            dims[-1], dims[-2] = dims[-2], dims[-1]
        if src.key in shapes:  # fused qkv: stacked along rows
            dims[0] += shapes[src.key][0]
        shapes[src.key] = tuple(dims)
    return shapes


def local_shard(
    name: str, config: ModelConfig, parallel: ParallelContext
) -> tuple[int, ShardRange]:
    """(dim, range) of the full tensor `name` that this rank holds (the whole, if not split)."""
    head_dim = config.head_dim
    leaf = name.split(".", 2)[-1] if name.startswith("layers.") else name
    if leaf in ("embed_tokens.weight", "lm_head.weight"):
        return 0, parallel.vocab(config.vocab_size)
    if leaf.startswith("self_attn.q_proj"):
        return 0, _times(parallel.q_heads(config.num_attention_heads), head_dim)
    if leaf.startswith(("self_attn.k_proj", "self_attn.v_proj")):
        return 0, _times(parallel.kv_heads(config.num_key_value_heads), head_dim)
    if leaf == "self_attn.o_proj.weight":
        return 1, _times(parallel.q_heads(config.num_attention_heads), head_dim)
    if leaf == "self_attn.sinks":
        return 0, parallel.q_heads(config.num_attention_heads)
    if leaf.startswith("mlp.experts."):
        return 0, parallel.experts(config.num_local_experts)
    return 0, ShardRange(0, -1, -1, -1)  # stop -1: the whole tensor


def _times(shard: ShardRange, factor: int) -> ShardRange:
    return ShardRange(
        shard.start * factor, shard.stop * factor, shard.total * factor, shard.capacity * factor
    )


# --- tensor sources ------------------------------------------------------------------------
class TensorSource(Protocol):
    def shapes(self) -> dict[str, tuple[int, ...]]: ...
    def itemsize(self, key: str) -> int: ...
    def read(self, key: str, dim: int, start: int, stop: int) -> torch.Tensor: ...


def _slice_index(dim: int, start: int, stop: int) -> tuple[slice, ...]:
    return (*([slice(None)] * dim), slice(start, None if stop < 0 else stop))


class SafetensorsSource:
    """Safetensors files (one file, or shards + model.safetensors.index.json), memory-mapped."""

    def __init__(self, files: list[Path]) -> None:
        self._stack = contextlib.ExitStack()
        self._file_of: dict[str, Any] = {}
        for path in files:
            handle = self._stack.enter_context(safe_open(str(path), framework="pt"))
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                self._file_of[key] = handle

    def __enter__(self) -> SafetensorsSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(h.get_slice(k).get_shape()) for k, h in self._file_of.items()}

    def itemsize(self, key: str) -> int:
        return _ITEMSIZE.get(self._file_of[key].get_slice(key).get_dtype(), 4)

    def read(self, key: str, dim: int, start: int, stop: int) -> torch.Tensor:
        tensor = self._file_of[key].get_slice(key)[_slice_index(dim, start, stop)]
        assert isinstance(tensor, torch.Tensor)
        return tensor


class DictSource:
    """Checkpoint-named tensors already in memory (a state dict in a checkpoint's naming)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: tuple(t.shape) for key, t in self.tensors.items()}

    def itemsize(self, key: str) -> int:
        return self.tensors[key].element_size()

    def read(self, key: str, dim: int, start: int, stop: int) -> torch.Tensor:
        return self.tensors[key][_slice_index(dim, start, stop)]


class RandomSource:
    """A deterministic random HF-dense checkpoint (like transformers' init): norms 1, biases 0,
    other weights N(0, std). Each tensor depends only on (seed, name), so every rank agrees."""

    def __init__(self, config: ModelConfig, seed: int = 0, std: float | None = None) -> None:
        self._shapes = checkpoint_shapes(config, "hf-dense")
        self.seed = seed
        self.std = config.initializer_range if std is None else std

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def itemsize(self, key: str) -> int:
        return 4

    def read(self, key: str, dim: int, start: int, stop: int) -> torch.Tensor:
        shape = self._shapes[key]
        if "norm" in key:
            full = torch.ones(shape)
        elif key.endswith("bias") and "router" not in key:
            full = torch.zeros(shape)
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + _stable_hash(key))
            full = torch.randn(shape, generator=generator) * self.std
        return full[_slice_index(dim, start, stop)]


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


# --- the loading plan ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Read:
    key: str
    dim: int
    start: int
    stop: int  # -1 = to the end


@dataclass
class _Step:
    """Fill `targets` (our local tensor names) from `reads` through `convert`."""

    targets: tuple[str, ...]
    reads: tuple[_Read, ...]
    convert: Callable[[list[torch.Tensor]], list[torch.Tensor]]


def _read_for(name: str, model: GptOss, fmt: CheckpointFormat) -> tuple[_Read, Source]:
    dim, shard = local_shard(name, model.config, model.parallel)
    src = source_of(name, model.config, fmt)
    if shard.stop < 0:
        return _Read(src.key, 0, src.offset, -1), src
    return _Read(src.key, dim, src.offset + shard.start, src.offset + shard.stop), src


def _plain_step(name: str, model: GptOss, fmt: CheckpointFormat) -> _Step:
    read, src = _read_for(name, model, fmt)

    def convert(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        tensor = tensors[0]
        return [tensor.transpose(-1, -2) if src.transposed else tensor]

    return _Step((name,), (read,), convert)


def _expert_step(base: str, model: GptOss, fmt: CheckpointFormat, dtype: torch.dtype) -> _Step:
    """An expert projection stored in the other format than the model keeps: decode/encode."""
    if model.experts_format == "dense":  # checkpoint has MXFP4 blocks + scales
        reads = tuple(_read_for(base + suffix, model, fmt)[0] for suffix in ("_blocks", "_scales"))
        return _Step((base,), reads, lambda t: [dequantize_mxfp4(t[0], t[1], dtype)])
    read, _ = _read_for(base, model, fmt)  # checkpoint has dense [E, in, out]
    targets = (base + "_blocks", base + "_scales")
    return _Step(targets, (read,), lambda t: list(quantize_mxfp4(t[0].transpose(-1, -2))))


def _plan(model: GptOss, fmt: CheckpointFormat, dtype: torch.dtype) -> list[_Step]:
    steps: list[_Step] = []
    convert_experts = model.experts_format != experts_format_of(fmt)
    for name in model.state_dict():
        base = name.removesuffix("_blocks").removesuffix("_scales")
        if convert_experts and base.endswith(("experts.gate_up_proj", "experts.down_proj")):
            if name == base or name.endswith("_blocks"):
                steps.append(_expert_step(base, model, fmt, dtype))
            continue
        steps.append(_plain_step(name, model, fmt))
    return steps


def _read_bytes(read: _Read, shapes: dict[str, tuple[int, ...]], source: TensorSource) -> int:
    dims = list(shapes[read.key])
    dims[read.dim] = (dims[read.dim] if read.stop < 0 else read.stop) - read.start
    return math.prod(dims) * source.itemsize(read.key)


def _copy_into(target: torch.Tensor, value: torch.Tensor, name: str, key: str) -> None:
    if value.shape != target.shape:
        padded_rows = value.shape[1:] == target.shape[1:] and value.shape[0] < target.shape[0]
        if not (padded_rows and name in ("embed_tokens.weight", "lm_head.weight")):
            raise CheckpointError(
                f"{key}: slice {tuple(value.shape)} does not fit model tensor {name} "
                f"{tuple(target.shape)}"
            )
        target[value.shape[0] :].zero_()
        target = target[: value.shape[0]]
    target.copy_(value.to(target.dtype))


def load_weights(
    model: GptOss,
    source: TensorSource,
    fmt: CheckpointFormat,
    progress: ProgressCallback | None = None,
) -> None:
    """Fill every tensor of `model` (this rank's slice) from `source`, one tensor at a time."""
    shapes = source.shapes()
    check_checkpoint(shapes, checkpoint_shapes(model.config, fmt), fmt)
    float_dtype = model.embed_tokens.weight.dtype
    steps = _plan(model, fmt, float_dtype)
    total = sum(_read_bytes(r, shapes, source) for step in steps for r in step.reads)
    done = 0
    state = model.state_dict()
    with torch.no_grad():
        for step in steps:
            tensors = [source.read(r.key, r.dim, r.start, r.stop) for r in step.reads]
            for name, value in zip(step.targets, step.convert(tensors), strict=True):
                _copy_into(state[name], value, name, step.reads[0].key)
            done += sum(_read_bytes(r, shapes, source) for r in step.reads)
            if progress is not None:
                progress(done, total)
    log.debug("weights loaded", format=fmt, bytes=total, tp_rank=model.parallel.tp_rank)


def check_checkpoint(
    found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], fmt: str
) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped tensors."""
    problems = []
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    misshaped = [
        f"{key} {tuple(found[key])} (config expects {tuple(expected[key])})"
        for key in sorted(expected.keys() & found.keys())
        if tuple(found[key]) != tuple(expected[key])
    ]
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", misshaped),
    ):
        if names:
            more = f" (and {len(names) - 10} more)" if len(names) > 10 else ""
            problems.append(f"{label} tensors: {', '.join(names[:10])}{more}")
    if problems:
        raise CheckpointError(f"{fmt} checkpoint does not match its config: " + "; ".join(problems))


# --- finding and loading a checkpoint --------------------------------------------------------
def find_checkpoint(folder: Path) -> tuple[CheckpointFormat, list[Path]]:
    """The format and safetensors files of a checkpoint folder (HF top level, else original/)."""
    hf_config = folder / "config.json"
    if hf_config.is_file() and original_config_file(folder) != hf_config:
        files = _hf_files(folder)
        keys = _keys_of(folder, files)
        fmt: CheckpointFormat = (
            "hf-mxfp4" if any(k.endswith("_blocks") for k in keys) else "hf-dense"
        )
        return fmt, files
    original = original_config_file(folder)
    if original is None:
        raise CheckpointError(f"{folder}: no config.json (HF) or original/config.json (OpenAI)")
    files = sorted(original.parent.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{original.parent}: no *.safetensors files")
    return "original", files


def _hf_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if not index.is_file():
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{folder}: no *.safetensors files and no {INDEX_FILE}")
        return files
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no weight_map")
    files = [folder / name for name in sorted(set(weight_map.values()))]
    absent = [path.name for path in files if not path.is_file()]
    if absent:
        raise CheckpointError(f"{index} names shard files that are missing: {', '.join(absent)}")
    return files


def _keys_of(folder: Path, files: list[Path]) -> list[str]:
    index = folder / INDEX_FILE
    if index.is_file():
        return list(json.loads(index.read_text())["weight_map"])
    keys: list[str] = []
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            keys += list(handle.keys())
    return keys


def init_random_weights(model: GptOss, seed: int = 0, std: float | None = None) -> GptOss:
    """Fill `model` with deterministic random weights (the same on every rank for a seed)."""
    load_weights(model, RandomSource(model.config, seed, std), "hf-dense")
    return model


def load_model(
    path_or_preset: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    parallel: ParallelContext | None = None,
    experts_format: ExpertsFormat | Literal["auto"] = "auto",
    progress: ProgressCallback | None = None,
    seed: int = 0,
) -> GptOss:
    """A checkpoint folder (HF MXFP4, HF dense or OpenAI original) or a preset name.

    A preset name that is not a folder gives random weights (seeded): for tests and demos.
    experts_format "auto" keeps the checkpoint's; "dense" decodes MXFP4 at load (faster on
    CPU); "mxfp4" encodes dense experts (lossy).
    """
    if path_or_preset in PRESETS and not Path(path_or_preset).exists():
        config = PRESETS[str(path_or_preset)]
        fmt = "mxfp4" if experts_format == "auto" else experts_format
        model = GptOss(config, parallel, experts_format=fmt, dtype=dtype, device=device)
        load_weights(model, RandomSource(config, seed), "hf-dense", progress)
        return model.eval()
    folder = Path(path_or_preset)
    config = load_config(folder)
    ckpt_format, files = find_checkpoint(folder)
    fmt = experts_format_of(ckpt_format) if experts_format == "auto" else experts_format
    model = GptOss(config, parallel, experts_format=fmt, dtype=dtype, device=device)
    with SafetensorsSource(files) as source:
        load_weights(model, source, ckpt_format, progress)
    log.info("model loaded", path=str(folder), format=ckpt_format, experts=fmt, files=len(files))
    return model.eval()
