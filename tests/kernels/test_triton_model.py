"""The model with every kernel on its Triton path (interpreter) against its torch path."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.backend import force_backend
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.model.model import ExpertsFormat, GptOss
from oss_serve.workers.model.weights import init_random_weights
from tests.workers.gpt_oss_helpers import full_sequence_logprobs, paged_logprobs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("triton_interpreter")]
TOLERANCE = 1e-4  # max |logprob difference|, fp32 (measured: <= 2e-5)


def _tiny_model(experts_format: ExpertsFormat) -> GptOss:
    """Two layers (sliding, full), GQA 4, MoE 8 experts top-4: small, but every path bites."""
    config = PRESETS["gpt-oss-tiny"].with_(
        vocab_size=300,
        num_hidden_layers=2,
        num_attention_heads=8,
        sliding_window=8,
        original_max_position_embeddings=16,
    )
    model = GptOss(config, experts_format=experts_format, dtype=torch.float32)
    return init_random_weights(model, seed=3, std=0.2).eval()


def _prompts(vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (n,), generator=g) for n in (21, 9, 30)]


@pytest.fixture
def triton_calls(monkeypatch):
    """Counts calls into the Triton launchers (each still runs), to prove the path ran."""
    from oss_serve.kernels import triton_attention, triton_kv, triton_moe, triton_norm, triton_rope

    calls: dict[str, int] = {}
    for module, name in (
        (triton_attention, "paged_attention"),
        (triton_attention, "varlen_attention"),
        (triton_kv, "store_kv"),
        (triton_moe, "route"),
        (triton_moe, "moe_experts"),
        (triton_norm, "rms_norm"),
        (triton_norm, "add_rms_norm"),
        (triton_rope, "apply_rope"),
        (triton_rope, "rope_qk_"),
    ):
        original = getattr(module, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("experts_format", ["mxfp4", "dense"])
def test_paged_prefill_and_decode_logits_match_the_torch_path(experts_format, triton_calls):
    model = _tiny_model(experts_format)
    prompts = _prompts(model.config.vocab_size)
    prompt_lens = [len(p) - 4 for p in prompts]  # the last 4 tokens of each are decoded
    drive = {"block_size": 4, "chunk": 7, "seed": 1}
    triton_run = paged_logprobs(model, prompts, prompt_lens, **drive)
    ran = set(triton_calls)
    with force_backend("torch"):
        torch_run = paged_logprobs(model, prompts, prompt_lens, **drive)
    assert ran == {
        "paged_attention",
        "store_kv",
        "route",
        "moe_experts",
        "rms_norm",
        "add_rms_norm",
        "rope_qk_",
    }
    assert triton_run.decode_only_steps >= 3
    for ours, expected in zip(triton_run.logprobs, torch_run.logprobs, strict=True):
        assert (ours - expected).abs().max().item() <= TOLERANCE


def test_flat_batch_without_a_cache_matches_the_torch_path(triton_calls):
    model = _tiny_model("mxfp4")
    prompts = _prompts(model.config.vocab_size)
    ours = full_sequence_logprobs(model, prompts)
    assert triton_calls["varlen_attention"] == model.config.num_hidden_layers
    with force_backend("torch"):
        expected = full_sequence_logprobs(model, prompts)
    for a, b in zip(ours, expected, strict=True):
        assert (a - b).abs().max().item() <= TOLERANCE
