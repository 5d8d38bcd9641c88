"""Decode batches padded to the CUDA-graph capture sizes give the results of unpadded ones.

The graphs themselves need a GPU (benchmarks/gpu_check.py runs them); what they replay is
the padded batch, and that padding runs here on the CPU through the same function
(`pad_decode_inputs`), eagerly: the real rows' hidden states, the sampled tokens and the KV
cache are those of the unpadded batch, and padding rows write nothing.
"""

from __future__ import annotations

import pytest
import torch

from oss_serve import LLM, SamplingParams
from oss_serve.workers.runner.cuda_graphs import capture_sizes, pad_decode_inputs, padded_size

pytestmark = pytest.mark.unit
MODEL = {"model": "gpt-oss-tiny", "dtype": "float32", "device": "cpu", "max_model_len": 128}


def test_default_capture_sizes_are_vllms_capped_at_max_num_seqs():
    assert capture_sizes(256) == [1, 2, 4, *range(8, 257, 8)]
    assert capture_sizes(10) == [1, 2, 4, 8, 10]
    assert capture_sizes(1024)[-1] == 512
    assert capture_sizes(64, [48, 3, 3, 100]) == [3, 48]
    with pytest.raises(ValueError, match=r"no size in 1\.\.4"):
        capture_sizes(4, [8])


def test_a_batch_pads_to_the_next_captured_size_or_runs_eagerly_beyond_the_largest():
    sizes = capture_sizes(64)
    assert [padded_size(n, sizes) for n in (1, 3, 5, 8, 9, 63, 64, 65)] == [
        1, 4, 8, 8, 16, 64, 64, None,
    ]  # fmt: skip


def _generate(**engine_args):
    llm = LLM(**MODEL, block_size=4, kv_cache_memory=4 << 20, skip_tokenizer_init=True,
              **engine_args)  # fmt: skip
    prompts = [[7 + i, 3 * i + 1, 11, 50 + i][: 1 + i % 4] for i in range(7)]
    params = [
        SamplingParams(temperature=0 if i % 2 else 0.8, seed=i, max_tokens=6 + i, logprobs=1)
        for i in range(7)
    ]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    tokens = [o.outputs[0].token_ids for o in outputs]
    logprobs = [[e[t].logprob for e, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids, strict=True)]
                for o in outputs]  # fmt: skip
    return tokens, logprobs, llm


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_padding_decode_batches_never_changes_tokens_logprobs_or_the_kv_cache(async_scheduling):
    plain_tokens, plain_logprobs, plain = _generate(async_scheduling=async_scheduling)
    padded_tokens, padded_logprobs, padded = _generate(
        async_scheduling=async_scheduling, pad_decode_batches=True, cuda_graph_sizes=[2, 8]
    )
    assert padded_tokens == plain_tokens
    for mine, reference in zip(padded_logprobs, plain_logprobs, strict=True):
        assert mine == pytest.approx(reference, abs=1e-5)
    plain_cache = plain.llm_engine.executor.runner.kv_caches
    padded_cache = padded.llm_engine.executor.runner.kv_caches
    for layer, (mine, reference) in enumerate(zip(padded_cache, plain_cache, strict=True)):
        assert torch.allclose(mine, reference, atol=1e-5), f"layer {layer}"
        assert torch.equal(mine[:, 0], reference[:, 0]), "padding rows wrote into block 0"


def test_padded_hidden_states_of_the_real_rows_equal_the_unpadded_ones():
    from oss_serve.workers.engine.engine_config import EngineConfig
    from oss_serve.workers.engine.scheduler_output import NewRequestData, SchedulerOutput
    from oss_serve.workers.runner.executor import LocalExecutor
    from oss_serve.workers.runner.input_preparation import prepare_inputs

    executor = LocalExecutor(EngineConfig(**MODEL, block_size=4))
    executor.initialize_kv_cache(64)
    runner = executor.runner
    prompts = {f"r{i}": [5 + i, 9, 2 * i + 1] for i in range(3)}
    groups = len(runner.spec.groups)
    prefill = SchedulerOutput(
        new_requests=[
            NewRequestData(request_id, tokens, 3, SamplingParams(temperature=0), 0,
                           frozenset(), [[1 + 3 * i, 2 + 3 * i]] * groups, 0)
            for i, (request_id, tokens) in enumerate(prompts.items())
        ],
        num_scheduled_tokens={request_id: 3 for request_id in prompts},
    )  # fmt: skip
    runner.execute_model(prefill)
    decode = SchedulerOutput(num_scheduled_tokens={request_id: 1 for request_id in prompts})
    for state in runner.states.states.values():
        state.num_computed_tokens = 3
    inputs = prepare_inputs(decode, runner.states.states, runner.spec, runner.device)
    padded = pad_decode_inputs(inputs, 8, max_blocks=32)
    assert padded.input_ids.shape == (8,) and padded.meta.seq_lens[3:].tolist() == [1] * 5
    for group in padded.meta.groups.values():
        assert group.block_table.shape == (8, 32)
        assert group.slot_mapping[3:].tolist() == [-1] * 5
    with torch.inference_mode():
        before = [cache.clone() for cache in runner.kv_caches]
        unpadded = runner.model(inputs.input_ids, inputs.positions, inputs.meta, runner.kv_caches)
        after_unpadded = [cache.clone() for cache in runner.kv_caches]
        for cache, saved in zip(runner.kv_caches, before, strict=True):
            cache.copy_(saved)
        hidden = runner.model(padded.input_ids, padded.positions, padded.meta, runner.kv_caches)
    assert torch.allclose(hidden[:3], unpadded, atol=1e-5)
    for cache, expected in zip(runner.kv_caches, after_unpadded, strict=True):
        assert torch.allclose(cache, expected, atol=1e-6)
