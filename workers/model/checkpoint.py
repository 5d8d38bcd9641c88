"""Write gpt-oss checkpoints: HF MXFP4 (what the Hub has), HF dense (what save_pretrained
writes), OpenAI original. Tests use it to make small gpt-oss-shaped checkpoints; finetune
uses it to save. Tensor names come from workers.weights, the only place that knows them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from oss_serve.kernels.mxfp4 import dequantize_mxfp4, quantize_mxfp4
from oss_serve.workers.model.config import ModelConfig
from oss_serve.workers.model.model import ExpertsFormat, GptOss
from oss_serve.workers.model.weights import (
    INDEX_FILE,
    CheckpointError,
    CheckpointFormat,
    check_checkpoint,
    experts_format_of,
    full_shapes,
    source_of,
)

DEFAULT_MAX_SHARD_BYTES = 4 * 1024**3
HF_MXFP4_QUANTIZATION = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
}
_EXPERT_WEIGHTS = ("experts.gate_up_proj", "experts.down_proj")


def save_checkpoint(
    model_or_state: GptOss | Mapping[str, torch.Tensor],
    config: ModelConfig,
    out_dir: str | Path,
    format: CheckpointFormat = "hf-mxfp4",
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a whole (unsharded) model or state dict (our names) as a checkpoint folder.

    dtype casts the floating tensors (None keeps them); MXFP4 blocks/scales stay uint8.
    `original` writes the folder OpenAI calls original/ (config.json, dtypes.json, weights).
    """
    if isinstance(model_or_state, GptOss):
        if not model_or_state.parallel.is_single:
            raise ValueError("save_checkpoint needs the whole model; this one is a parallel shard")
        state: Mapping[str, torch.Tensor] = model_or_state.state_dict()
    else:
        state = model_or_state
    state_format = _experts_format_of_state(state)
    expected = {name: tuple(shape) for name, shape in full_shapes(config, state_format).items()}
    check_checkpoint({n: tuple(t.shape) for n, t in state.items()}, expected, "state dict")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _checkpoint_tensors(state, config, format, state_format, dtype)
    dtypes = _write_shards(tensors, out, max_shard_bytes, single_name="model.safetensors")
    if format == "original":
        (out / "config.json").write_text(json.dumps(config.to_original(), indent=2))
        labels = {key: _original_dtype_label(key, dtype_name) for key, dtype_name in dtypes.items()}
        (out / "dtypes.json").write_text(json.dumps(labels, indent=2))
    else:
        hf_config = config.to_hf()
        float_dtypes = {d for d in dtypes.values() if d != "uint8"}
        hf_config["torch_dtype"] = float_dtypes.pop() if len(float_dtypes) == 1 else "float32"
        if format == "hf-mxfp4":
            hf_config["quantization_config"] = HF_MXFP4_QUANTIZATION
        (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    return out


def _experts_format_of_state(state: Mapping[str, torch.Tensor]) -> ExpertsFormat:
    return "mxfp4" if any(name.endswith("_blocks") for name in state) else "dense"


def _checkpoint_tensors(
    state: Mapping[str, torch.Tensor],
    config: ModelConfig,
    fmt: CheckpointFormat,
    state_format: ExpertsFormat,
    dtype: torch.dtype | None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) in model order; fused tensors appear when complete."""
    pieces: dict[str, dict[int, torch.Tensor]] = {}  # fused qkv: offset -> q, k or v
    for name, tensor in _in_checkpoint_experts_format(state, experts_format_of(fmt), dtype):
        src = source_of(name, config, fmt)
        value = tensor.transpose(-1, -2) if src.transposed else tensor
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        if src.key.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            pieces.setdefault(src.key, {})[src.offset] = value
            if len(pieces[src.key]) < 3:
                continue
            parts = pieces.pop(src.key)
            value = torch.cat([parts[offset] for offset in sorted(parts)])
        yield src.key, value.contiguous()


def _in_checkpoint_experts_format(
    state: Mapping[str, torch.Tensor], target: ExpertsFormat, dtype: torch.dtype | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Our tensors, with expert weights re-encoded when the checkpoint keeps the other format."""
    for name, tensor in state.items():
        base = name.removesuffix("_blocks").removesuffix("_scales")
        stored_as: ExpertsFormat = "dense" if name == base else "mxfp4"
        if not base.endswith(_EXPERT_WEIGHTS) or stored_as == target:
            yield name, tensor.detach()
        elif target == "mxfp4":  # dense weight -> blocks + scales
            blocks, scales = quantize_mxfp4(tensor.detach())
            yield base + "_blocks", blocks
            yield base + "_scales", scales
        elif name.endswith("_blocks"):  # blocks + scales -> dense weight (scales ride along)
            out_dtype = dtype or state[base + "_bias"].dtype
            yield base, dequantize_mxfp4(tensor, state[base + "_scales"], out_dtype)


def _write_shards(
    tensors: Iterator[tuple[str, torch.Tensor]], out: Path, max_shard_bytes: int, single_name: str
) -> dict[str, str]:
    """Write safetensors shards of at most max_shard_bytes (HF names, index when > 1 shard)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    dtypes: dict[str, str] = {}
    temp_names: list[Path] = []

    def flush() -> None:
        path = out / f".shard-{len(temp_names):05d}.tmp"
        save_file(shards[-1], str(path), metadata={"format": "pt"})
        temp_names.append(path)

    for key, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and sizes[-1] + nbytes > max_shard_bytes:
            flush()
            shards.append({})
            sizes.append(0)
        shards[-1][key] = tensor
        sizes[-1] += nbytes
        dtypes[key] = str(tensor.dtype).removeprefix("torch.")
    flush()
    count = len(temp_names)
    if count == 1:
        temp_names[0].replace(out / single_name)
        return dtypes
    weight_map = {}
    for number, (path, shard) in enumerate(zip(temp_names, shards, strict=True), start=1):
        name = f"model-{number:05d}-of-{count:05d}.safetensors"
        path.replace(out / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return dtypes


def _original_dtype_label(key: str, dtype_name: str) -> str:
    if key.endswith(".blocks"):
        return "FP4"
    if key.endswith(".scales"):
        return "UE8"
    return {"bfloat16": "BF16", "float32": "FP32", "float16": "FP16"}.get(dtype_name, dtype_name)


__all__ = ["DEFAULT_MAX_SHARD_BYTES", "CheckpointError", "save_checkpoint"]
