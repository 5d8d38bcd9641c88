"""Parameter counts and bytes by component, counted on the real model built on `meta`.

"Active" follows the gpt-oss model card: per token, the chosen top-k experts, attention,
router, norms and the unembedding; the embedding is a lookup and does not count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from oss_serve.workers.model.config import PRESETS, ModelConfig, load_config
from oss_serve.workers.model.model import ExpertsFormat, GptOss

WeightsFormat = Literal["mxfp4", "bf16", "fp32"]
COMPONENTS = ("embedding", "unembedding", "attention", "router", "experts", "norms")
_FLOAT_BYTES = {"mxfp4": 2, "bf16": 2, "fp32": 4}  # mxfp4 checkpoints keep the rest in bf16


@dataclass
class ComponentCount:
    params: int = 0
    active_params: int = 0
    bytes: int = 0


@dataclass
class ParameterReport:
    model: str
    weights_format: WeightsFormat
    components: dict[str, ComponentCount] = field(default_factory=dict)

    @property
    def total_params(self) -> int:
        return sum(c.params for c in self.components.values())

    @property
    def active_params(self) -> int:
        return sum(c.active_params for c in self.components.values())

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.components.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weights_format": self.weights_format,
            "total_params": self.total_params,
            "active_params": self.active_params,
            "total_bytes": self.total_bytes,
            "components": {name: asdict(count) for name, count in self.components.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def component_of(name: str) -> str:
    """Which component a model tensor belongs to, by its name."""
    if name.startswith("embed_tokens."):
        return "embedding"
    if name.startswith("lm_head."):
        return "unembedding"
    if "norm" in name:
        return "norms"
    if ".self_attn." in name:
        return "attention"
    if ".mlp.router." in name:
        return "router"
    if ".mlp.experts." in name:
        return "experts"
    raise ValueError(f"no component for tensor {name}")


def parameter_report(
    config: ModelConfig, weights_format: WeightsFormat = "mxfp4", model: str = "custom"
) -> ParameterReport:
    """Count every tensor of the full (unsharded) model; allocates nothing (meta device)."""
    experts_format: ExpertsFormat = "mxfp4" if weights_format == "mxfp4" else "dense"
    meta_model = GptOss(config, experts_format=experts_format, device="meta")
    active_share = config.num_experts_per_tok / config.num_local_experts
    report = ParameterReport(model, weights_format, {c: ComponentCount() for c in COMPONENTS})
    for name, tensor in meta_model.state_dict().items():
        component = component_of(name)
        count = report.components[component]
        params, nbytes = tensor.numel(), tensor.numel() * _FLOAT_BYTES[weights_format]
        if tensor.dtype == torch.uint8:  # MXFP4: blocks hold two values a byte; scales no params
            params = 2 * tensor.numel() if name.endswith("_blocks") else 0
            nbytes = tensor.numel()
        count.params += params
        count.bytes += nbytes
        if component == "experts":
            count.active_params += round(params * active_share)
        elif component != "embedding":
            count.active_params += params
    return report


def report_for(
    model: str | Path, weights_format: WeightsFormat | Literal["auto"] = "auto"
) -> ParameterReport:
    """The report for a preset name or checkpoint folder (format read off the checkpoint)."""
    config = load_config(model)
    if weights_format == "auto":
        weights_format = "mxfp4"
        if not (isinstance(model, str) and model in PRESETS):
            weights_format = _checkpoint_weights_format(Path(model))
    return parameter_report(config, weights_format, model=str(model))


def _checkpoint_weights_format(folder: Path) -> WeightsFormat:
    from oss_serve.workers.model.weights import find_checkpoint

    fmt, _ = find_checkpoint(folder)
    if fmt != "hf-dense":
        return "mxfp4"
    config_file = folder / "config.json"
    dtype = json.loads(config_file.read_text()).get("torch_dtype", "bfloat16")
    return "fp32" if dtype == "float32" else "bf16"
