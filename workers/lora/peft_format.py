"""LoRA adapters in Hugging Face PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

The one place that knows PEFT's tensor names. Attention projections are PEFT
`target_modules` (`...self_attn.q_proj.lora_A.weight` [r, in], `lora_B.weight` [out, r]).
gpt-oss's experts are fused 3-D parameters, which PEFT adapts through `target_parameters`
(`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`) with a `ParamWrapper` per parameter:
`lora_A.weight` [r * E, in] holds expert e's A in rows e*r .. e*r + r - 1, and
`lora_B.weight` [out, r * E] holds expert e's B in columns j*E + e (rank-major). Two adapted
parameters of one module nest their wrappers, so the inner one's tensors carry an extra
`base_layer.` in their names; which is which is read off the shapes (gate_up: in = hidden,
out = 2 * intermediate; down: in = intermediate, out = hidden), never off the nesting.

In memory an adapter uses the model's own layout and names (`LoRAAdapter.weights`):
"layers.3.self_attn.q_proj" -> (A [r, in], B [out, r]) and
"layers.3.mlp.experts.gate_up_proj" -> (A [E, r, in], B [E, out, r]), with out/in as in the
model's [out, in] weights, so that W + scale * B @ A is the merged weight.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from oss_serve.workers.model.config import ModelConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
EXPERT_TARGETS = ("gate_up_proj", "down_proj")
_PREFIX = "base_model.model.model."
_KEY = re.compile(
    r"layers\.(\d+)\.(?:self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(experts)((?:\.base_layer)*))"
    r"\.lora_([AB])\.weight"
)
# PEFT options that change the math; any other value than these is refused by name
_UNSUPPORTED: dict[str, Any] = {
    "use_dora": False,
    "lora_bias": False,
    "fan_in_fan_out": False,
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layer_replication": None,
}


class AdapterError(ValueError):
    """An adapter that cannot be served: says which file or tensor and why."""


class AdapterRankError(AdapterError):
    """The adapter's rank is above the engine's max_lora_rank."""


@dataclass
class LoRAAdapter:
    """One adapter's tensors in the model's layout, by target weight name."""

    rank: int
    alpha: float
    use_rslora: bool = False
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    base_model_name_or_path: str | None = None

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def targets_experts(self) -> bool:
        return any(name.endswith(EXPERT_TARGETS) for name in self.weights)

    def delta(self, name: str) -> torch.Tensor:
        """scale * B @ A of one target: what merging adds to its weight."""
        lora_a, lora_b = self.weights[name]
        return self.scale * torch.matmul(lora_b, lora_a)


def expected_shapes(config: ModelConfig, name: str) -> tuple[int, int, int]:
    """(experts or 0, out, in) of the full (unsharded) weight a target adapts."""
    leaf = name.rsplit(".", 1)[-1]
    hidden, inter = config.hidden_size, config.intermediate_size
    return {
        "q_proj": (0, config.q_size, hidden),
        "k_proj": (0, config.kv_size, hidden),
        "v_proj": (0, config.kv_size, hidden),
        "o_proj": (0, hidden, config.q_size),
        "gate_up_proj": (config.num_local_experts, 2 * inter, hidden),
        "down_proj": (config.num_local_experts, hidden, inter),
    }[leaf]


# --- reading -------------------------------------------------------------------------------
def read_adapter(
    path: str | Path, config: ModelConfig, *, max_rank: int | None = None
) -> LoRAAdapter:
    """Read and check a PEFT LoRA adapter folder against the model it is served on."""
    folder = Path(path)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise AdapterError(f"{folder} is not a PEFT adapter folder: it has no {ADAPTER_CONFIG}")
    adapter = _read_config(folder / ADAPTER_CONFIG)
    if max_rank is not None and adapter.rank > max_rank:
        raise AdapterRankError(
            f"adapter {folder} has rank {adapter.rank}, above max_lora_rank={max_rank} "
            "(raise --max-lora-rank)"
        )
    tensors = _read_tensors(folder / ADAPTER_WEIGHTS)
    adapter.weights = _to_model_layout(tensors, adapter.rank, config, folder)
    return adapter


def _read_config(path: Path) -> LoRAAdapter:
    try:
        raw: Any = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    if raw.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{path}: peft_type {raw.get('peft_type')!r} is not LORA")
    for option, plain in _UNSUPPORTED.items():
        value = raw.get(option, plain)
        if value not in (plain, None, [], {}, False):
            raise AdapterError(f"{path}: {option}={value!r} is not supported for serving")
    if raw.get("bias", "none") != "none":
        raise AdapterError(f"{path}: bias={raw.get('bias')!r} is not supported (use 'none')")
    rank, alpha = raw.get("r"), raw.get("lora_alpha", raw.get("r"))
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"{path}: r must be a positive integer, got {rank!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise AdapterError(f"{path}: lora_alpha must be a number, got {alpha!r}")
    base = raw.get("base_model_name_or_path")
    return LoRAAdapter(
        rank=rank,
        alpha=float(alpha),
        use_rslora=bool(raw.get("use_rslora", False)),
        base_model_name_or_path=base if isinstance(base, str) else None,
    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise AdapterError(f"the adapter has no {path.name} (only safetensors weights are read)")
    try:
        with safe_open(str(path), framework="pt") as reader:
            return {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterError(f"{path} is not a readable safetensors file: {err}") from err


def _to_model_layout(
    tensors: dict[str, torch.Tensor], rank: int, config: ModelConfig, folder: Path
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.fullmatch(key.removeprefix(_PREFIX))
        if not key.startswith(_PREFIX) or match is None:
            raise AdapterError(
                f"{folder}: tensor {key!r} is not a LoRA weight of gpt-oss's attention "
                f"projections ({', '.join(ATTENTION_TARGETS)}) or experts"
            )
        layer, proj, _, nesting, which = match.groups()
        if int(layer) >= config.num_hidden_layers:
            raise AdapterError(f"{folder}: {key} is for layer {layer}, the model has fewer")
        if not torch.isfinite(tensor.float()).all():
            raise AdapterError(f"{folder}: tensor {key} holds NaN or infinite values")
        pairs.setdefault((int(layer), proj or f"experts{nesting}"), {})[which] = tensor.float()
    if not pairs:
        raise AdapterError(f"{folder}: {ADAPTER_WEIGHTS} holds no LoRA weights")
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, target), pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{folder}: layer {layer} {target} has lora_A or lora_B missing")
        if target.startswith("experts"):
            name, lora_a, lora_b = _experts_pair(pair["A"], pair["B"], rank, config, layer)
        else:
            name, lora_a, lora_b = f"layers.{layer}.self_attn.{target}", pair["A"], pair["B"]
        if name in weights:
            raise AdapterError(f"{folder}: {name} appears twice")
        _check_shapes(name, lora_a, lora_b, rank, config, folder)
        weights[name] = (lora_a.contiguous(), lora_b.contiguous())
    return weights


def _experts_pair(
    lora_a: torch.Tensor, lora_b: torch.Tensor, rank: int, config: ModelConfig, layer: int
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """PEFT's fused-expert factors -> (name, A [E, r, in], B [E, out, r]); the parameter is
    the one whose (in, out) the shapes fit."""
    experts = config.num_local_experts
    for leaf in EXPERT_TARGETS:
        name = f"layers.{layer}.mlp.experts.{leaf}"
        _, out_features, in_features = expected_shapes(config, name)
        if lora_a.shape == (rank * experts, in_features) and lora_b.shape == (
            out_features,
            rank * experts,
        ):
            per_expert_a = lora_a.reshape(experts, rank, in_features)
            per_expert_b = lora_b.reshape(out_features, rank, experts).permute(2, 0, 1)
            return name, per_expert_a, per_expert_b
    raise AdapterError(
        f"layer {layer} experts: lora_A {tuple(lora_a.shape)} / lora_B {tuple(lora_b.shape)} fit "
        f"neither gate_up_proj nor down_proj of this model at rank {rank} with {experts} experts"
    )


def _check_shapes(
    name: str,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    rank: int,
    config: ModelConfig,
    folder: Path,
) -> None:
    experts, out_features, in_features = expected_shapes(config, name)
    lead = (experts,) if experts else ()
    want_a, want_b = (*lead, rank, in_features), (*lead, out_features, rank)
    if tuple(lora_a.shape) != want_a or tuple(lora_b.shape) != want_b:
        raise AdapterError(
            f"{folder}: {name} has lora_A {tuple(lora_a.shape)} and lora_B "
            f"{tuple(lora_b.shape)}; this model at rank {rank} needs {want_a} and {want_b}"
        )


# --- writing -------------------------------------------------------------------------------
def write_adapter(
    path: str | Path, adapter: LoRAAdapter, *, base_model_name_or_path: str | None = None
) -> None:
    """Write an adapter the way PEFT's `save_pretrained` does (PEFT and vLLM load it)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    modules: set[str] = set()
    parameters: set[str] = set()
    expert_layers = {n.split(".")[1] for n in adapter.weights if n.endswith(EXPERT_TARGETS)}
    nested = {
        layer
        for layer in expert_layers
        if all(f"layers.{layer}.mlp.experts.{leaf}" in adapter.weights for leaf in EXPERT_TARGETS)
    }
    for name, (lora_a, lora_b) in sorted(adapter.weights.items()):
        layer, leaf = name.split(".")[1], name.rsplit(".", 1)[-1]
        if leaf in ATTENTION_TARGETS:
            modules.add(leaf)
            stem = f"{_PREFIX}{name}"
            flat_a, flat_b = lora_a, lora_b
        else:
            parameters.add(f"mlp.experts.{leaf}")
            inner = layer in nested and leaf == EXPERT_TARGETS[0]  # PEFT wraps gate_up first
            stem = f"{_PREFIX}layers.{layer}.mlp.experts" + (".base_layer" if inner else "")
            experts, rank, in_features = lora_a.shape
            flat_a = lora_a.reshape(experts * rank, in_features)
            flat_b = lora_b.permute(1, 2, 0).reshape(lora_b.shape[1], rank * experts)
        tensors[f"{stem}.lora_A.weight"] = flat_a.detach().contiguous().cpu()
        tensors[f"{stem}.lora_B.weight"] = flat_b.detach().contiguous().cpu()
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "use_rslora": adapter.use_rslora,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "target_modules": sorted(modules) or None,
        "target_parameters": sorted(parameters, key=_expert_order) or None,
        "base_model_name_or_path": base_model_name_or_path or adapter.base_model_name_or_path,
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _expert_order(parameter: str) -> int:
    return EXPERT_TARGETS.index(parameter.rsplit(".", 1)[-1])
