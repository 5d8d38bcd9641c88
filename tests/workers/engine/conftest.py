"""A tiny fp32 gpt-oss checkpoint written by transformers, shared by the engine tests."""

from __future__ import annotations

import pytest
import torch

TINY_HF = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "sliding_window": 16,
    "layer_types": ["sliding_attention", "full_attention"] * 2,
    "max_position_embeddings": 1024,
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 32,
    },
    "pad_token_id": 0,
    "eos_token_id": 1,
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(transformers model, its save_pretrained folder): the engine loads the same weights."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(1234)
    model = GptOssForCausalLM(GptOssConfig(**TINY_HF)).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("tiny-gpt-oss")
    model.save_pretrained(folder)
    return model, folder
