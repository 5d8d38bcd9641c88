"""The engine end to end on the tiny checkpoint: seeds, n > 1, stops, bad input, hooks, events."""

from __future__ import annotations

import pytest
import torch

from oss_serve import LLM, SamplingParams
from oss_serve.common.kv_hash import block_hashes
from oss_serve.workers.engine.sampling_params import InvalidRequestError
from oss_serve.workers.runner.logits_processors import RequestLogitsProcessor

pytestmark = pytest.mark.unit
PROMPT = list(range(10, 60))


def _llm(folder, **overrides) -> LLM:
    args = {"max_model_len": 256, "block_size": 4, "kv_cache_memory": 4 << 20, **overrides}
    return LLM(str(folder), dtype="float32", device="cpu", **args)


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return _llm(tiny_checkpoint[1])


def _tokens(llm: LLM, prompts, params) -> list[list[int]]:
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    return [o.outputs[0].token_ids for o in outputs]


def test_seeded_sampling_is_the_same_alone_in_a_crowd_and_after_preemption(llm, tiny_checkpoint):
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=12, min_tokens=12)
    alone = _tokens(llm, [PROMPT], seeded)[0]
    crowd_prompts = [[5 + i] * (3 + 7 * i) for i in range(8)]
    crowd_params = [SamplingParams(temperature=0.7, max_tokens=12) for _ in crowd_prompts]
    crowd = _tokens(llm, [*crowd_prompts[:4], PROMPT, *crowd_prompts[4:]],
                    [*crowd_params[:4], seeded, *crowd_params[4:]])  # fmt: skip
    assert crowd[4] == alone
    tight = _llm(tiny_checkpoint[1], num_kv_blocks=48, max_num_batched_tokens=32, max_model_len=96)
    squeezed = _tokens(tight, [*crowd_prompts[:4], PROMPT, *crowd_prompts[4:]],
                       [*crowd_params[:4], seeded, *crowd_params[4:]])  # fmt: skip
    assert tight.llm_engine.stats().num_preemptions > 0
    assert squeezed[4] == alone
    other_seed = _tokens(llm, [PROMPT], seeded.clone(seed=99))[0]
    assert other_seed != alone


def test_n_sequences_share_the_prompt_blocks_and_greedy_ones_agree(tiny_checkpoint):
    engine = _llm(tiny_checkpoint[1], enable_prefix_caching=False)
    single = _tokens(engine, [PROMPT], SamplingParams(temperature=0, max_tokens=6))[0]
    (output,) = engine.generate(
        {"prompt_token_ids": PROMPT}, SamplingParams(temperature=0, max_tokens=6, n=3)
    )
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert all(c.token_ids == single for c in output.outputs)
    # siblings reuse the leader's prompt blocks even with prefix caching off
    assert engine.llm_engine.stats().prefix_cache_hits >= 2 * (len(PROMPT) // 4 - 1) * 4


def test_finish_reasons_for_length_stop_token_and_stop_string(llm):
    base = _tokens(llm, [PROMPT], SamplingParams(temperature=0, max_tokens=8))[0]
    (length,) = llm.generate(
        {"prompt_token_ids": PROMPT}, SamplingParams(temperature=0, max_tokens=8)
    )
    assert length.outputs[0].finish_reason == "length"
    stop_id = base[3]
    (stopped,) = llm.generate({"prompt_token_ids": PROMPT},
                              SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[stop_id]))  # fmt: skip
    completion = stopped.outputs[0]
    assert completion.finish_reason == "stop" and completion.stop_reason == stop_id
    assert completion.token_ids == base[: base.index(stop_id) + 1]
    text = length.outputs[0].text
    stop_text = text[len(text) // 2 : len(text) // 2 + 2]
    if stop_text.strip():
        (by_string,) = llm.generate({"prompt_token_ids": PROMPT},
                                    SamplingParams(temperature=0, max_tokens=8, stop=[stop_text]))  # fmt: skip
        assert by_string.outputs[0].finish_reason == "stop"
        assert by_string.outputs[0].stop_reason == stop_text
        assert by_string.outputs[0].text == text[: text.index(stop_text)]


@pytest.mark.parametrize(
    ("prompt", "params", "field"),
    [
        ({"prompt_token_ids": list(range(300))}, {}, "prompt"),
        ({"prompt_token_ids": []}, {}, "prompt"),
        ({"prompt_token_ids": [1, 99999]}, {}, "prompt"),
        ({"prompt_token_ids": [1, 2]}, {"logit_bias": {100000: 1.0}}, "logit_bias"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error_and_the_engine_keeps_serving(
    llm, prompt, params, field
):
    with pytest.raises(InvalidRequestError) as info:
        llm.generate([{"prompt_token_ids": PROMPT}, prompt], SamplingParams(max_tokens=2, **params))
    assert info.value.field == field
    assert not llm.llm_engine.has_unfinished_requests()
    assert len(_tokens(llm, [PROMPT], SamplingParams(max_tokens=3))[0]) == 3


def test_unknown_engine_argument_is_named(tiny_checkpoint):
    with pytest.raises(InvalidRequestError, match="max_batch_size"):
        _llm(tiny_checkpoint[1], max_batch_size=4)


def test_tensor_parallel_without_the_cluster_executor_is_a_clear_error(tiny_checkpoint):
    # LLM(tensor_parallel_size=2) runs on Ray (tests/cluster); the in-process executor refuses
    from oss_serve.workers.engine.engine_config import EngineConfig
    from oss_serve.workers.runner.executor import LocalExecutor

    with pytest.raises(ValueError, match="tensor_parallel_size"):
        LocalExecutor(EngineConfig(model=str(tiny_checkpoint[1]), tensor_parallel_size=2))


class _BanToken(RequestLogitsProcessor):
    def __init__(self, banned: int) -> None:
        self.banned = banned
        self.accepted: list[int] = []

    def apply(self, output_token_ids, logits):
        logits[self.banned] = float("-inf")
        return logits

    def accept_token(self, token_id: int) -> None:
        self.accepted.append(token_id)


def test_logits_processors_mask_tokens_and_are_told_what_was_accepted(llm):
    base = _tokens(llm, [PROMPT], SamplingParams(temperature=0, max_tokens=6))[0]
    processor = _BanToken(base[2])
    out = _tokens(
        llm, [PROMPT], SamplingParams(temperature=0, max_tokens=6, logits_processors=[processor])
    )[0]
    assert out[:2] == base[:2] and out[2] != base[2] and base[2] not in out
    assert processor.accepted == out
    calls = []
    fn = lambda ids, logits: (calls.append(len(ids)), logits)[1]  # noqa: E731
    _tokens(llm, [PROMPT], SamplingParams(temperature=0, max_tokens=3, logits_processors=[fn]))
    assert calls == [0, 1, 2]


def test_kv_events_reach_the_sink_with_the_routers_block_hashes(tiny_checkpoint):
    received = []
    engine = _llm(tiny_checkpoint[1], kv_event_sink=received.extend)
    engine.generate({"prompt_token_ids": PROMPT}, SamplingParams(max_tokens=1))
    stored = [h for e in received if e.kind == "stored" for h in e.block_hashes]
    assert stored[: len(PROMPT) // 4] == block_hashes(PROMPT, 4)


def test_prompt_logprobs_and_sample_logprobs_have_vllm_shapes(llm):
    (output,) = llm.generate({"prompt_token_ids": PROMPT},
                             SamplingParams(temperature=0, max_tokens=3, logprobs=2, prompt_logprobs=1))  # fmt: skip
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(PROMPT)
    for position, entry in enumerate(output.prompt_logprobs[1:], start=1):
        assert PROMPT[position] in entry and 1 <= len(entry) <= 2
    completion = output.outputs[0]
    assert len(completion.logprobs) == 3
    for token, entry in zip(completion.token_ids, completion.logprobs, strict=True):
        assert entry[token].rank == 1  # greedy picks the top token
    total = sum(
        e[t].logprob for t, e in zip(completion.token_ids, completion.logprobs, strict=True)
    )
    assert completion.cumulative_logprob == pytest.approx(total)
    assert torch.isfinite(torch.tensor(total))
