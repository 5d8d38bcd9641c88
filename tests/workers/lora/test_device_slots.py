"""Adapters in device slots: one flat batch mixing adapters and the base model gives each
sequence what its merged model (finetune's merge) gives it."""

from __future__ import annotations

import pytest
import torch

from oss_serve.workers.lora.device_slots import AdapterSlots
from tests.workers.gpt_oss_helpers import full_sequence_logprobs
from tests.workers.lora.lora_helpers import base_model, trained_adapter

pytestmark = pytest.mark.unit
TOLERANCE = 1e-4


def test_a_mixed_batch_matches_each_merged_model_within_1e_4_logprob():
    base = base_model()
    adapters = [
        trained_adapter(base, rank=4, alpha=8.0, targets=("attention", "experts"), seed=1),
        trained_adapter(base, rank=2, alpha=4.0, targets=("attention",), seed=2),
        trained_adapter(base, rank=8, alpha=8.0, targets=("experts",), seed=3),
    ]
    slots = AdapterSlots(base, max_loras=4, max_lora_rank=8)
    for slot, (adapter, _) in zip((2, 0, 3), adapters, strict=True):
        slots.load(slot, adapter)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 300, (n,), generator=generator) for n in (11, 7, 20, 5, 9)]
    who = [2, -1, 0, 3, 2]  # slot per prompt; -1 = the base model
    slots.set_batch(
        torch.cat([torch.full((len(p),), s) for p, s in zip(prompts, who, strict=True)]),
        {s for s in who if s >= 0},
    )
    mixed = full_sequence_logprobs(base, prompts)
    merged_by_slot = {2: adapters[0][1], 0: adapters[1][1], 3: adapters[2][1], -1: None}
    slots.set_batch(None, set())
    for prompt, logprobs, slot in zip(prompts, mixed, who, strict=True):
        reference = merged_by_slot[slot] or base
        expected = full_sequence_logprobs(reference, [prompt])[0]
        diff = (logprobs - expected).abs().max().item()
        assert diff <= TOLERANCE, f"slot {slot}: max |logprob diff| {diff}"
        if slot >= 0:  # the adapter does change the output
            plain = full_sequence_logprobs(base, [prompt])[0]
            assert (logprobs - plain).abs().max().item() > 1e-2


def test_a_cleared_slot_adds_nothing_and_a_smaller_rank_overwrites_a_larger_one():
    base = base_model()
    big, _ = trained_adapter(base, rank=8, alpha=8.0, targets=("attention", "experts"), seed=4)
    small, merged_small = trained_adapter(base, rank=2, alpha=2.0, targets=("attention",), seed=5)
    slots = AdapterSlots(base, max_loras=1, max_lora_rank=8)
    prompt = torch.arange(3, 19)
    slots.load(0, big)
    slots.load(0, small)
    slots.set_batch(torch.zeros(len(prompt), dtype=torch.long), {0})
    got = full_sequence_logprobs(base, [prompt])[0]
    torch.testing.assert_close(
        got, full_sequence_logprobs(merged_small, [prompt])[0], atol=1e-4, rtol=0
    )
    slots.clear(0)
    got = full_sequence_logprobs(base, [prompt])[0]
    slots.set_batch(None, set())
    torch.testing.assert_close(got, full_sequence_logprobs(base, [prompt])[0], atol=1e-6, rtol=0)


def test_the_host_tier_keeps_max_cpu_loras_adapters_least_recently_used_first_out(tmp_path):
    from oss_serve.workers.lora.host_cache import HostAdapterCache
    from oss_serve.workers.lora.peft_format import write_adapter
    from oss_serve.workers.lora.request import LoRARequest
    from oss_serve.workers.lora.synthetic import random_adapter
    from oss_serve.workers.model.parallel import SINGLE_PROCESS
    from tests.workers.lora.lora_helpers import SMALL

    loras = []
    for index in range(3):
        write_adapter(tmp_path / str(index), random_adapter(SMALL, rank=2, alpha=2.0, seed=index))
        loras.append(LoRARequest(f"a{index}", index + 1, str(tmp_path / str(index))))
    cache = HostAdapterCache(SMALL, SINGLE_PROCESS, max_cpu_loras=2, max_lora_rank=4)
    for lora in (loras[0], loras[1], loras[0], loras[2]):  # a2 pushes out a1, not a0
        cache.get(lora)
    assert cache.held() == [1, 3] and cache.disk_reads == 3
    cache.get(loras[1])  # from disk again
    assert cache.held() == [3, 2] and cache.disk_reads == 4
