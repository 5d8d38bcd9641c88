"""The model against transformers' GptOssForCausalLM (the oracle), fp32, every position."""

from __future__ import annotations

import pytest
import torch

from oss_serve.workers.model.weights import load_model
from tests.workers.gpt_oss_helpers import (
    full_sequence_logprobs,
    hf_logprobs,
    paged_logprobs,
    random_hf_model,
    tiny_hf_config,
)

pytestmark = pytest.mark.unit
TOLERANCE = 1e-4


def _prompts(hf_config, seed: int, count: int = 3) -> list[torch.Tensor]:
    """Prompts longer than the sliding window and than original_max_position_embeddings."""
    generator = torch.Generator().manual_seed(seed)
    original = hf_config.rope_parameters["original_max_position_embeddings"]
    longest = max(original, hf_config.sliding_window) + 8
    lengths = [longest + 17 * i for i in range(count)]
    return [torch.randint(0, hf_config.vocab_size, (n,), generator=generator) for n in lengths]


@pytest.fixture(scope="module", params=[0, 1, 2])
def twin_models(request, tmp_path_factory):
    """(transformers model, ours loaded from its save_pretrained folder) for a random config."""
    hf_config = tiny_hf_config(seed=request.param)
    hf_model = random_hf_model(hf_config, seed=request.param)
    folder = tmp_path_factory.mktemp(f"hf-{request.param}")
    hf_model.save_pretrained(folder)
    ours = load_model(folder, dtype=torch.float32)
    return hf_model, ours, request.param


def test_every_position_matches_transformers_in_one_flat_batch(twin_models):
    hf_model, ours, seed = twin_models
    prompts = _prompts(hf_model.config, seed)
    for prompt, logprobs in zip(prompts, full_sequence_logprobs(ours, prompts), strict=True):
        diff = (logprobs - hf_logprobs(hf_model, prompt)).abs().max().item()
        assert diff <= TOLERANCE, f"seed {seed}: max |logprob diff| {diff}"


def test_paged_kv_chunked_prefill_and_decode_match_transformers(twin_models):
    hf_model, ours, seed = twin_models
    prompts = _prompts(hf_model.config, seed)
    prompt_lens = [len(p) - 6 for p in prompts]  # the last 6 tokens of each are decoded
    run = paged_logprobs(ours, prompts, prompt_lens, block_size=4, chunk=13, seed=seed)
    assert run.decode_only_steps >= 3  # the batched one-query-per-sequence path ran
    for prompt, logprobs in zip(prompts, run.logprobs, strict=True):
        diff = (logprobs - hf_logprobs(hf_model, prompt)).abs().max().item()
        assert diff <= TOLERANCE, f"seed {seed}: max |logprob diff| {diff}"
