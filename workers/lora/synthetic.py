"""Random LoRA adapters for tests and benchmarks (as init_random_weights is for models)."""

from __future__ import annotations

import torch

from oss_serve.workers.lora.peft_format import (
    ATTENTION_TARGETS,
    EXPERT_TARGETS,
    LoRAAdapter,
    expected_shapes,
)
from oss_serve.workers.model.config import ModelConfig


def random_adapter(
    config: ModelConfig,
    *,
    rank: int,
    alpha: float,
    seed: int,
    experts: bool = True,
    std: float = 0.3,
) -> LoRAAdapter:
    """Random A and B (both non-zero) for every attention projection, and the experts."""
    generator = torch.Generator().manual_seed(seed)
    leaves = [f"self_attn.{proj}" for proj in ATTENTION_TARGETS]
    if experts:
        leaves += [f"mlp.experts.{proj}" for proj in EXPERT_TARGETS]
    weights = {}
    for layer in range(config.num_hidden_layers):
        for leaf in leaves:
            name = f"layers.{layer}.{leaf}"
            num_experts, out_features, in_features = expected_shapes(config, name)
            lead = (num_experts,) if num_experts else ()
            lora_a = torch.randn(*lead, rank, in_features, generator=generator) * std
            lora_b = torch.randn(*lead, out_features, rank, generator=generator) * std
            weights[name] = (lora_a, lora_b)
    return LoRAAdapter(rank=rank, alpha=alpha, weights=weights)
