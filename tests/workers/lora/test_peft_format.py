"""PEFT adapter folders: HF PEFT's own adapters on a small gpt-oss load and match PEFT's
forward; finetune's adapters round-trip; bad folders fail with a message naming the problem."""

from __future__ import annotations

import json

import pytest
import torch

from oss_serve.workers.lora.device_slots import AdapterSlots
from oss_serve.workers.lora.peft_format import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterError,
    AdapterRankError,
    read_adapter,
    write_adapter,
)
from oss_serve.workers.model.weights import load_model
from tests.workers.gpt_oss_helpers import (
    full_sequence_logprobs,
    hf_logprobs,
    random_hf_model,
    tiny_hf_config,
)
from tests.workers.lora.lora_helpers import SMALL, base_model, trained_adapter

pytestmark = pytest.mark.unit
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory):
    """(PEFT model, our base model, the adapter folder PEFT saved) on a random tiny gpt-oss."""
    peft = pytest.importorskip("peft")
    hf_config = tiny_hf_config(seed=1)
    hf_model = random_hf_model(hf_config, seed=1)
    base_dir = tmp_path_factory.mktemp("hf-base")
    hf_model.save_pretrained(base_dir)
    ours = load_model(base_dir, dtype=torch.float32)
    lora_config = peft.LoraConfig(
        r=4,
        lora_alpha=12,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    )
    peft_model = peft.get_peft_model(hf_model, lora_config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:  # PEFT starts B at zero: make every factor matter
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    adapter_dir = tmp_path_factory.mktemp("peft-adapter")
    peft_model.save_pretrained(adapter_dir)
    return peft_model.eval(), ours, adapter_dir


def test_an_hf_peft_adapter_on_attention_and_fused_experts_matches_peft_forward(peft_adapter):
    peft_model, ours, adapter_dir = peft_adapter
    adapter = read_adapter(adapter_dir, ours.config)
    assert adapter.rank == 4 and adapter.scale == 3.0 and adapter.targets_experts
    assert len(adapter.weights) == 6 * ours.config.num_hidden_layers
    slots = AdapterSlots(ours, max_loras=2, max_lora_rank=8)
    slots.load(1, adapter)
    prompt = torch.randint(
        0, ours.config.vocab_size, (19,), generator=torch.Generator().manual_seed(3)
    )
    slots.set_batch(torch.ones(len(prompt), dtype=torch.long), {1})
    got = full_sequence_logprobs(ours, [prompt])[0]
    slots.set_batch(None, set())
    expected = hf_logprobs(peft_model, prompt)
    assert (got - expected).abs().max().item() <= TOLERANCE
    with peft_model.disable_adapter():  # and the adapter is not a no-op
        assert (got - hf_logprobs(peft_model, prompt)).abs().max().item() > 1e-2


def test_a_finetune_adapter_round_trips_through_the_peft_files(tmp_path):
    base = base_model()
    adapter, _ = trained_adapter(base, rank=4, alpha=8.0, targets=("attention", "experts"), seed=1)
    write_adapter(tmp_path, adapter, base_model_name_or_path="gpt-oss-small")
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert config["target_parameters"] == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    assert config["base_model_name_or_path"] == "gpt-oss-small"
    again = read_adapter(tmp_path, SMALL)
    assert again.scale == adapter.scale and set(again.weights) == set(adapter.weights)
    for name, (lora_a, lora_b) in adapter.weights.items():
        assert torch.equal(again.weights[name][0], lora_a) and torch.equal(
            again.weights[name][1], lora_b
        )


def _folder(tmp_path, config: dict | str, weights: bytes | None = None):
    (tmp_path / ADAPTER_CONFIG).write_text(
        config if isinstance(config, str) else json.dumps(config)
    )
    if weights is not None:
        (tmp_path / ADAPTER_WEIGHTS).write_bytes(weights)
    return tmp_path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no adapter_config.json"),
        (lambda p: _folder(p, "{not json"), "not valid JSON"),
        (lambda p: _folder(p, {"r": 4, "use_dora": True}), "use_dora"),
        (lambda p: _folder(p, {"r": 4, "lora_alpha": 8}), "no adapter_model.safetensors"),
        (lambda p: _folder(p, {"r": 4}, b"\x00garbage" * 10), "not a readable safetensors"),
    ],
)
def test_a_bad_adapter_folder_fails_with_what_is_wrong(tmp_path, make, message):
    with pytest.raises(AdapterError, match=message):
        read_adapter(make(tmp_path), SMALL)


def test_a_rank_above_the_maximum_is_refused_before_reading_the_weights(tmp_path):
    with pytest.raises(AdapterRankError, match="rank 64, above max_lora_rank=16"):
        read_adapter(_folder(tmp_path, {"r": 64, "lora_alpha": 8}), SMALL, max_rank=16)


def test_weights_for_another_model_shape_are_refused_naming_the_tensor(tmp_path):
    base = base_model()
    adapter, _ = trained_adapter(base, rank=2, alpha=2.0, targets=("attention",), seed=1)
    write_adapter(tmp_path, adapter)
    with pytest.raises(AdapterError, match=r"layers\.0\.self_attn\.k_proj has lora_A"):
        read_adapter(tmp_path, SMALL.with_(num_key_value_heads=4))
