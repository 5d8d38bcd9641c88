"""LoRA on a Ray TP x EP replica (CPU, gloo): each rank holds its shard of every adapter,
cut like the base weights (q/k/v rows and o_proj columns by heads, experts by EP range),
and a batch mixing two adapters and the base model gives the single-process engine's
answers."""

from __future__ import annotations

import pytest

from oss_serve import LLM, SamplingParams
from oss_serve.workers.lora.peft_format import write_adapter
from oss_serve.workers.lora.request import LoRARequest
from oss_serve.workers.lora.synthetic import random_adapter
from tests.cluster.ray.ray_engines import write_checkpoint
from tests.cluster.ray.test_ray_tp_ep import CONFIG
from tests.cluster.ray.test_ray_tp_ep import ENGINE_ARGS as TP_EP_ENGINE_ARGS

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ENGINE_ARGS = {**TP_EP_ENGINE_ARGS, "enable_lora": True, "max_loras": 2, "max_lora_rank": 8}
TOLERANCE = 1e-4


def _logprobs(output) -> list[float]:
    completion = output.outputs[0]
    prompt = [
        entry[t].logprob
        for entry, t in zip(output.prompt_logprobs[1:], output.prompt_token_ids[1:], strict=True)
    ]
    return prompt + [
        e[t].logprob for e, t in zip(completion.logprobs, completion.token_ids, strict=True)
    ]


def test_a_tp2_ep2_replica_serves_a_mixed_adapter_batch_like_one_process(ray_runtime, tmp_path):
    checkpoint = write_checkpoint(CONFIG, tmp_path / "base", seed=5)
    loras = []
    for index, (rank, experts) in enumerate(((4, True), (8, False)), start=1):
        folder = tmp_path / f"adapter-{index}"
        write_adapter(
            folder, random_adapter(CONFIG, rank=rank, alpha=8.0, seed=index, experts=experts)
        )
        loras.append(LoRARequest(f"adapter-{index}", index, str(folder)))
    who = [loras[0], None, loras[1], loras[0], None]
    prompts = [{"prompt_token_ids": list(range(3 + i, 40 + 7 * i))} for i in range(len(who))]
    prompts[1] = prompts[0]  # the same prompt with and without the adapter
    params = SamplingParams(
        temperature=0, max_tokens=5, ignore_eos=True, logprobs=0, prompt_logprobs=0
    )
    single = LLM(str(checkpoint), **ENGINE_ARGS).generate(prompts, params, lora_request=who)
    sharded = LLM(
        str(checkpoint), tensor_parallel_size=2, expert_parallel_size=2, **ENGINE_ARGS
    ).generate(prompts, params, lora_request=who)
    for expected, got, lora in zip(single, sharded, who, strict=True):
        assert got.outputs[0].token_ids == expected.outputs[0].token_ids, lora
        diff = max(abs(a - b) for a, b in zip(_logprobs(got), _logprobs(expected), strict=True))
        assert diff <= TOLERANCE, f"{lora}: max |logprob diff| {diff}"
    assert (
        max(abs(a - b) for a, b in zip(_logprobs(single[0]), _logprobs(single[1]), strict=True))
        > 1e-2
    )
