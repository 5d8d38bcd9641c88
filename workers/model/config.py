"""The gpt-oss model configuration: plain numbers with Hugging Face field names.

Reads HF `config.json` (transformers 4.x `rope_scaling` or 5.x `rope_parameters`) and
OpenAI's `original/config.json`, and carries the two published models as presets.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from oss_serve.workers.model.attention_metadata import FULL_ATTENTION, SLIDING_ATTENTION

LAYER_TYPES = (SLIDING_ATTENTION, FULL_ATTENTION)
# ModelConfig fields that HF keeps inside the rope dict
_ROPE_FIELDS = (
    "rope_scaling_factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "rope_truncate",
)


def alternating_layer_types(num_hidden_layers: int) -> tuple[str, ...]:
    """gpt-oss alternates: even layers slide over a window, odd layers see everything."""
    return tuple(LAYER_TYPES[i % 2] for i in range(num_hidden_layers))


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and constants of one gpt-oss model (defaults = gpt-oss-20b)."""

    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    num_hidden_layers: int = 24
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    head_dim: int = 64
    num_local_experts: int = 32
    num_experts_per_tok: int = 4
    sliding_window: int = 128
    layer_types: tuple[str, ...] = field(default_factory=lambda: alternating_layer_types(24))
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    rope_truncate: bool = False
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    eos_token_id: int = 200002
    pad_token_id: int = 199999
    bos_token_id: int = 199998
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        checks = {
            "num_attention_heads": self.num_attention_heads % max(self.num_key_value_heads, 1) == 0,
            "layer_types": len(self.layer_types) == self.num_hidden_layers
            and all(t in LAYER_TYPES for t in self.layer_types),
            "num_experts_per_tok": 0 < self.num_experts_per_tok <= self.num_local_experts,
            "head_dim": self.head_dim % 2 == 0,
            "sliding_window": self.sliding_window > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"ModelConfig: invalid {name} in {self}")

    # --- derived shapes ----------------------------------------------------------------------
    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def rope_concentration(self) -> float:
        """YaRN's attention scaling of cos/sin: 0.1 ln(factor) + 1 (1 when not scaled)."""
        factor = self.rope_scaling_factor
        return 0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0

    def with_(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed; layer_types follows num_hidden_layers if not given."""
        if "num_hidden_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = alternating_layer_types(changes["num_hidden_layers"])
        return replace(self, **changes)

    # --- Hugging Face config.json ------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Build from a HF `config.json` dict (transformers 4.x or 5.x spelling)."""
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        num_layers = int(hf["num_hidden_layers"])
        eos = hf.get("eos_token_id", 200002)
        kwargs: dict[str, Any] = {
            name: hf[name]
            for name in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "sliding_window",
                "swiglu_limit",
                "swiglu_alpha",
                "rms_norm_eps",
                "max_position_embeddings",
                "pad_token_id",
                "bos_token_id",
                "initializer_range",
            )
            if hf.get(name) is not None
        }
        kwargs.update(
            num_hidden_layers=num_layers,
            num_local_experts=int(hf.get("num_local_experts", hf.get("num_experts", 32))),
            num_experts_per_tok=int(hf.get("num_experts_per_tok", hf.get("experts_per_token", 4))),
            layer_types=tuple(hf.get("layer_types") or alternating_layer_types(num_layers)),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 150000.0))),
            eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
        )
        if rope:
            # transformers treats a rope dict without "truncate" as truncating.
            kwargs.update(
                rope_scaling_factor=float(rope.get("factor", 1.0)),
                original_max_position_embeddings=int(
                    rope.get("original_max_position_embeddings", 4096)
                ),
                beta_fast=float(rope.get("beta_fast") or 32.0),
                beta_slow=float(rope.get("beta_slow") or 1.0),
                rope_truncate=bool(rope.get("truncate", True)),
            )
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dict (both rope spellings, so transformers 4.x and 5.x read it)."""
        rope = {
            "rope_type": "yarn",
            "factor": self.rope_scaling_factor,
            "beta_fast": self.beta_fast,
            "beta_slow": self.beta_slow,
            "truncate": self.rope_truncate,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }
        plain = asdict(self)
        for name in _ROPE_FIELDS:
            plain.pop(name)
        plain["layer_types"] = list(self.layer_types)
        return {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            **plain,
            "experts_per_token": self.num_experts_per_tok,
            "rope_scaling": rope,
            "rope_parameters": {**rope, "rope_theta": self.rope_theta},
            "initial_context_length": self.original_max_position_embeddings,
            "attention_bias": True,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "use_cache": True,
            "output_router_logits": False,
            "router_aux_loss_coef": 0.9,
        }

    # --- OpenAI original/config.json ---------------------------------------------------------
    @classmethod
    def from_original(cls, original: dict[str, Any]) -> ModelConfig:
        """Build from OpenAI's `original/config.json` (R ModelConfig names)."""
        num_layers = int(original["num_hidden_layers"])
        context = int(original.get("initial_context_length", 4096))
        factor = float(original.get("rope_scaling_factor", 1.0))
        return cls(
            vocab_size=int(original["vocab_size"]),
            hidden_size=int(original["hidden_size"]),
            intermediate_size=int(original["intermediate_size"]),
            num_hidden_layers=num_layers,
            num_attention_heads=int(original["num_attention_heads"]),
            num_key_value_heads=int(original["num_key_value_heads"]),
            head_dim=int(original["head_dim"]),
            num_local_experts=int(original["num_experts"]),
            num_experts_per_tok=int(original["experts_per_token"]),
            sliding_window=int(original["sliding_window"]),
            layer_types=alternating_layer_types(num_layers),
            rope_theta=float(original["rope_theta"]),
            rope_scaling_factor=factor,
            original_max_position_embeddings=context,
            max_position_embeddings=int(context * max(factor, 1.0)),
            beta_fast=float(original.get("rope_ntk_beta", 32.0)),
            beta_slow=float(original.get("rope_ntk_alpha", 1.0)),
            rope_truncate=False,
            swiglu_limit=float(original.get("swiglu_limit", 7.0)),
        )

    def to_original(self) -> dict[str, Any]:
        """OpenAI's `original/config.json` dict (it has no place for non-alternating layers)."""
        if self.layer_types != alternating_layer_types(self.num_hidden_layers):
            raise ValueError("the original format only describes alternating sliding/full layers")
        return {
            "num_hidden_layers": self.num_hidden_layers,
            "num_experts": self.num_local_experts,
            "experts_per_token": self.num_experts_per_tok,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": self.original_max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": self.rope_scaling_factor,
            "rope_ntk_alpha": self.beta_slow,
            "rope_ntk_beta": self.beta_fast,
        }


PRESETS: dict[str, ModelConfig] = {
    "gpt-oss-20b": ModelConfig(),
    "gpt-oss-120b": ModelConfig().with_(num_hidden_layers=36, num_local_experts=128),
    # gpt-oss-shaped and small enough for a laptop CPU: the real vocabulary, tiny everything
    # else, and a window / original context short enough that both bite in short prompts.
    "gpt-oss-tiny": ModelConfig(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=4,
        layer_types=alternating_layer_types(4),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=8,
        num_experts_per_tok=4,
        sliding_window=16,
        original_max_position_embeddings=64,
        beta_fast=4.0,
        max_position_embeddings=2048,
    ),
}


def original_config_file(folder: Path) -> Path | None:
    """The OpenAI-format config.json of a checkpoint folder (itself or its original/), if any."""
    for candidate in (folder / "config.json", folder / "original" / "config.json"):
        if candidate.is_file() and _is_original(_read_json(candidate)):
            return candidate
    return None


def load_config(path_or_preset: str | Path) -> ModelConfig:
    """A preset name, a checkpoint folder (HF or OpenAI format), or a config.json file."""
    if isinstance(path_or_preset, str) and path_or_preset in PRESETS:
        return PRESETS[path_or_preset]
    path = Path(path_or_preset)
    if path.is_file():
        return _config_from_dict(_read_json(path), path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {str(path_or_preset)!r} is neither a preset ({', '.join(PRESETS)}) "
            "nor an existing checkpoint folder"
        )
    hf_file = path / "config.json"
    if hf_file.is_file() and not _is_original(_read_json(hf_file)):
        return _config_from_dict(_read_json(hf_file), hf_file)
    original = original_config_file(path)
    if original is None:
        raise FileNotFoundError(f"no config.json in {path} (nor in {path / 'original'})")
    return ModelConfig.from_original(_read_json(original))


def _config_from_dict(data: dict[str, Any], source: Path) -> ModelConfig:
    try:
        if _is_original(data):
            return ModelConfig.from_original(data)
        return ModelConfig.from_hf(data)
    except KeyError as err:
        raise ValueError(f"{source}: missing field {err.args[0]!r}") from err


def _is_original(data: dict[str, Any]) -> bool:
    """OpenAI's config names the expert count `num_experts` and has no `model_type`."""
    return "num_experts" in data and "model_type" not in data


def _read_json(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
