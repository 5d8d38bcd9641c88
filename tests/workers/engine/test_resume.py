"""Resuming a request from the tokens it already emitted (its replica died): the fresh engine
continues exactly as if never interrupted and outputs only what follows."""

from __future__ import annotations

import pytest

from oss_serve import LLM, AsyncEngine, EngineConfig, SamplingParams
from oss_serve.workers.engine.outputs import RequestOutput
from oss_serve.workers.engine.sampling_params import InvalidRequestError, RequestOutputKind

pytestmark = pytest.mark.unit
PROMPT = list(range(30, 75))
# non-greedy, with every penalty and a min_tokens that straddles the interruption points
SEEDED = SamplingParams(
    temperature=1.0, top_p=0.95, seed=4321, max_tokens=14, min_tokens=9,
    presence_penalty=0.8, frequency_penalty=0.6, repetition_penalty=1.3,
)  # fmt: skip
ENGINE_ARGS = {"max_model_len": 256, "block_size": 4, "kv_cache_memory": 4 << 20}


def _llm(folder) -> LLM:
    return LLM(str(folder), dtype="float32", device="cpu", **ENGINE_ARGS)


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoint) -> RequestOutput:
    (output,) = _llm(tiny_checkpoint[1]).generate({"prompt_token_ids": PROMPT}, SEEDED)
    assert len(output.outputs[0].token_ids) == SEEDED.max_tokens
    return output


def _resume(llm: LLM, request_id: str, emitted: list[int], params: SamplingParams):
    core = llm.llm_engine
    core.add_request(
        request_id, PROMPT, params.clone(output_kind=RequestOutputKind.FINAL_ONLY),
        resume_output_token_ids=emitted,
    )  # fmt: skip
    while core.has_unfinished_requests():
        for output in core.step():
            if output.finished:
                return output
    raise AssertionError("the resumed request never finished")


def test_seeded_sampling_with_penalties_resumed_after_k_tokens_equals_the_uninterrupted_run(
    tiny_checkpoint, uninterrupted
):
    full = uninterrupted.outputs[0].token_ids
    fresh = _llm(tiny_checkpoint[1])  # another replica: nothing cached, its own seed stream
    for k in (1, 5, 11):
        resumed = _resume(fresh, f"resume-{k}", full[:k], SEEDED)
        completion = resumed.outputs[0]
        assert completion.token_ids == full, f"resumed after {k} tokens"
        assert completion.text == uninterrupted.outputs[0].text
        assert completion.finish_reason == "length"
        assert resumed.prompt_token_ids == PROMPT
    # the old way (emitted tokens fed back as prompt) restarts the sampling index and the
    # penalties' output counts: the same request diverges
    as_prompt = fresh.generate(
        {"prompt_token_ids": PROMPT + full[:5]}, SEEDED.clone(max_tokens=9, min_tokens=4)
    )[0]
    assert as_prompt.outputs[0].token_ids != full[5:]


def test_a_stop_string_across_the_resume_point_is_found(tiny_checkpoint, uninterrupted):
    full = uninterrupted.outputs[0].token_ids
    tokenizer = _llm(tiny_checkpoint[1]).get_tokenizer()
    assert tokenizer is not None
    pieces = [tokenizer.decode_single_token_bytes(t).decode("utf-8", "replace") for t in full]
    k = next(i for i in range(2, len(full) - 1) if pieces[i - 1].strip() and pieces[i].strip())
    stop = pieces[k - 1][-1] + pieces[k][0]  # spans emitted token k-1 and new token k
    params = SEEDED.clone(stop=[stop], min_tokens=0)
    (reference,) = _llm(tiny_checkpoint[1]).generate({"prompt_token_ids": PROMPT}, params)
    assert reference.outputs[0].finish_reason == "stop"
    stopped_at = len(reference.outputs[0].token_ids)
    assert stopped_at >= k  # the first occurrence ends at or after the resume point
    resumed = _resume(_llm(tiny_checkpoint[1]), "stop", full[: min(k, stopped_at - 1)], params)
    assert resumed.outputs[0].token_ids == reference.outputs[0].token_ids
    assert resumed.outputs[0].text == reference.outputs[0].text
    assert resumed.outputs[0].stop_reason == stop


async def test_a_resumed_stream_sends_only_the_new_tokens(tiny_checkpoint, uninterrupted):
    full = uninterrupted.outputs[0].token_ids
    engine = AsyncEngine(
        EngineConfig(model=str(tiny_checkpoint[1]), dtype="float32", device="cpu", **ENGINE_ARGS)
    )
    await engine.start()
    try:
        deltas = [
            d
            async for d in engine.generate(
                "streamed", PROMPT, SEEDED, resume_output_token_ids=full[:6]
            )
        ]
        assert [t for d in deltas for t in d.outputs[0].token_ids] == full[6:]
        assert deltas[-1].outputs[0].finish_reason == "length"
        with pytest.raises(InvalidRequestError) as error:  # nothing left to generate
            _ = [
                d
                async for d in engine.generate("done", PROMPT, SEEDED, resume_output_token_ids=full)
            ]
        assert error.value.field == "resume_output_token_ids"
        with pytest.raises(InvalidRequestError) as error:
            _ = [
                d
                async for d in engine.generate(
                    "n2", PROMPT, SEEDED.clone(n=2), resume_output_token_ids=full[:2]
                )
            ]
        assert error.value.field == "resume_output_token_ids"
    finally:
        await engine.shutdown()
