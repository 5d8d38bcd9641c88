"""Acceptance: the engine's greedy tokens and prompt logprobs equal transformers' (fp32).

32 concurrent requests of mixed lengths (many longer than the 16-token sliding window,
several sharing prefixes) against transformers' `generate` run one request at a time, with
prefix caching on and off, with chunked prefill forced small, and with a KV pool so small
that requests are preempted and recomputed.
"""

from __future__ import annotations

import random

import pytest
import torch

from oss_serve import LLM, SamplingParams

pytestmark = [pytest.mark.unit, pytest.mark.slow]
LOGPROB_TOLERANCE = 1e-4
NUM_REQUESTS = 32


def _workload(vocab_size: int) -> list[tuple[list[int], int, bool]]:
    """(prompt, max_tokens, wants prompt_logprobs) for 32 requests."""
    rng = random.Random(7)
    system = [rng.randrange(2, vocab_size) for _ in range(40)]
    shared_long = [rng.randrange(2, vocab_size) for _ in range(70)]
    requests = []
    for i in range(NUM_REQUESTS):
        tail = [rng.randrange(2, vocab_size) for _ in range(rng.choice([1, 5, 17, 33, 60]))]
        if i % 3 == 0:
            prompt = system + tail
        elif i % 3 == 1:
            prompt = shared_long[: rng.choice([48, 64, 70])] + tail
        else:
            prompt = tail
        requests.append((prompt, rng.choice([4, 9, 14]), i % 4 == 0))
    return requests


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """transformers, one request at a time: greedy continuations and prompt logprobs."""
    hf_model, _ = tiny_checkpoint
    results = []
    for prompt, max_tokens, _ in _workload(hf_model.config.vocab_size):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            generated = hf_model.generate(
                ids,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            logprobs = torch.log_softmax(hf_model(ids).logits[0].float(), dim=-1)
        scored = logprobs[:-1].gather(1, ids[0, 1:, None]).squeeze(1)
        results.append((generated[0, len(prompt) :].tolist(), scored))
    return results


ENGINE_VARIANTS = {
    "prefix-caching": {"enable_prefix_caching": True},
    "no-prefix-caching": {"enable_prefix_caching": False},
    "small-chunks": {"long_prefill_token_threshold": 7, "max_num_batched_tokens": 48},
    "preempting-pool": {"num_kv_blocks": 60, "max_num_batched_tokens": 32, "max_model_len": 160},
}


@pytest.mark.parametrize("variant", list(ENGINE_VARIANTS))
def test_greedy_tokens_and_prompt_logprobs_match_transformers(tiny_checkpoint, reference, variant):
    _, folder = tiny_checkpoint
    engine_args = {"max_model_len": 256, **ENGINE_VARIANTS[variant]}
    llm = LLM(
        str(folder),
        dtype="float32",
        device="cpu",
        block_size=4,
        kv_cache_memory=8 << 20,
        **engine_args,
    )
    workload = _workload(512)
    params = [
        SamplingParams(
            temperature=0,
            max_tokens=max_tokens,
            min_tokens=max_tokens,
            prompt_logprobs=0 if wants else None,
        )
        for _, max_tokens, wants in workload
    ]
    outputs = llm.generate([{"prompt_token_ids": p} for p, _, _ in workload], params)
    assert len(outputs) == NUM_REQUESTS
    for index, (output, (tokens, scored)) in enumerate(zip(outputs, reference, strict=True)):
        assert output.outputs[0].token_ids == tokens, f"request {index} ({variant})"
        if workload[index][2]:
            prompt = workload[index][0]
            assert output.prompt_logprobs[0] is None
            assert len(output.prompt_logprobs) == len(prompt)
            pairs = zip(output.prompt_logprobs[1:], prompt[1:], strict=True)
            ours = torch.tensor([entry[token].logprob for entry, token in pairs])
            assert torch.allclose(ours, scored, rtol=0, atol=LOGPROB_TOLERANCE), variant
    stats = llm.llm_engine.stats()
    if variant == "preempting-pool":
        assert stats.num_preemptions > 0
    if variant == "prefix-caching":
        assert stats.prefix_cache_hits > 0
    if variant == "no-prefix-caching":
        assert stats.prefix_cache_hits == 0
