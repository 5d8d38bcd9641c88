"""Small gpt-oss models with trained-looking LoRA adapters, and their merged twins."""

from __future__ import annotations

import copy

import torch

from oss_serve.workers.lora.peft_format import LoRAAdapter
from oss_serve.workers.model.config import ModelConfig
from oss_serve.workers.model.model import GptOss
from oss_serve.workers.model.weights import init_random_weights
from oss_serve.workers.training.lora import apply_lora, lora_adapter, merge_lora

SMALL = ModelConfig(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    num_local_experts=4,
    num_experts_per_tok=2,
    sliding_window=8,
    layer_types=("sliding_attention", "full_attention"),
    max_position_embeddings=512,
    original_max_position_embeddings=64,
    rope_scaling_factor=8.0,
    eos_token_id=1,
    pad_token_id=0,
    bos_token_id=2,
)


def base_model(config: ModelConfig = SMALL, seed: int = 0) -> GptOss:
    model = GptOss(config, experts_format="dense", dtype=torch.float32)
    return init_random_weights(model, seed=seed, std=0.2).eval()


def trained_adapter(
    base: GptOss, *, rank: int, alpha: float, targets: tuple[str, ...], seed: int
) -> tuple[LoRAAdapter, GptOss]:
    """(an adapter with non-zero A and B, the base model with that adapter merged in)."""
    model = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(seed)
    for param in apply_lora(model, rank=rank, alpha=alpha, targets=targets):
        param.data = torch.randn(param.shape, generator=generator) * 0.3
    adapter = lora_adapter(model)
    merge_lora(model)
    return adapter, model.eval()
