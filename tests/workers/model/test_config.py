"""ModelConfig from the published config files, presets, and YaRN's frequencies."""

from __future__ import annotations

import json

import pytest
import torch

from oss_serve.workers.model.config import PRESETS, ModelConfig, load_config
from oss_serve.workers.model.model import yarn_inv_freq

pytestmark = pytest.mark.unit

# the published gpt-oss-20b config.json (transformers 4.55 spelling), trimmed of unused keys
HF_20B = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "head_dim": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "num_hidden_layers": 24,
    "num_local_experts": 32,
    "experts_per_token": 4,
    "num_experts_per_tok": 4,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "sliding_window": 128,
    "max_position_embeddings": 131072,
    "initial_context_length": 4096,
    "rope_theta": 150000,
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "original_max_position_embeddings": 4096,
        "truncate": False,
    },
    "swiglu_limit": 7.0,
    "rms_norm_eps": 1e-05,
    "vocab_size": 201088,
    "eos_token_id": 200002,
    "pad_token_id": 199999,
    "tie_word_embeddings": False,
    "quantization_config": {"quant_method": "mxfp4"},
}
ORIGINAL_120B = {
    "num_hidden_layers": 36,
    "num_experts": 128,
    "experts_per_token": 4,
    "vocab_size": 201088,
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "swiglu_limit": 7.0,
    "head_dim": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "sliding_window": 128,
    "initial_context_length": 4096,
    "rope_theta": 150000,
    "rope_scaling_factor": 32.0,
    "rope_ntk_alpha": 1,
    "rope_ntk_beta": 32,
}


def test_published_hf_config_is_the_20b_preset():
    assert ModelConfig.from_hf(HF_20B) == PRESETS["gpt-oss-20b"]


def test_published_original_config_is_the_120b_preset():
    assert ModelConfig.from_original(ORIGINAL_120B) == PRESETS["gpt-oss-120b"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_configs_round_trip_through_both_spellings_and_transformers(name):
    from transformers import GptOssConfig

    config = PRESETS[name]
    assert ModelConfig.from_hf(config.to_hf()) == config
    assert ModelConfig.from_original(config.to_original()) == config
    transformers_dict = GptOssConfig(**config.to_hf()).to_dict()  # 5.x: rope_parameters
    assert ModelConfig.from_hf(transformers_dict) == config


def test_yarn_frequencies_match_the_reference_values_and_transformers():
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = PRESETS["gpt-oss-20b"]
    inv_freq = yarn_inv_freq(config)
    samples = {0: 1.0, 1: 0.6890443, 8: 0.05081327, 9: 0.0317057, 17: 1.293187e-4, 31: 3.023511e-7}
    for index, value in samples.items():
        assert inv_freq[index].item() == pytest.approx(value, rel=1e-5)
    assert config.rope_concentration == pytest.approx(1.3465736, rel=1e-7)
    theirs, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](GptOssConfig(**config.to_hf()))
    assert torch.equal(inv_freq, theirs)
    assert attention_factor == pytest.approx(config.rope_concentration)


def test_load_config_reads_presets_folders_and_files(tmp_path):
    assert load_config("gpt-oss-120b") == PRESETS["gpt-oss-120b"]
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(HF_20B))
    assert load_config(tmp_path / "hf") == PRESETS["gpt-oss-20b"]
    (tmp_path / "repo" / "original").mkdir(parents=True)
    (tmp_path / "repo" / "original" / "config.json").write_text(json.dumps(ORIGINAL_120B))
    assert load_config(tmp_path / "repo") == PRESETS["gpt-oss-120b"]
    assert (
        load_config(str(tmp_path / "repo" / "original" / "config.json")) == PRESETS["gpt-oss-120b"]
    )


def test_unknown_models_and_bad_configs_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpt-oss-7b"):
        load_config("gpt-oss-7b")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_oss"}))
    with pytest.raises(ValueError, match="num_hidden_layers"):
        load_config(tmp_path)
    with pytest.raises(ValueError, match="num_attention_heads"):
        PRESETS["gpt-oss-20b"].with_(num_key_value_heads=7)
    with pytest.raises(ValueError, match="layer_types"):
        PRESETS["gpt-oss-20b"].with_(layer_types=("full_attention",))
