"""Sampler: statistical checks against reference distributions computed here, and determinism."""

from __future__ import annotations

import pytest
import torch

from oss_serve.workers.sampler import Sampler, SamplingRow, uniform_for
from oss_serve.workers.sampling_params import InvalidRequestError, SamplingParams

pytestmark = pytest.mark.unit
VOCAB = 12
DRAWS = 6000


def _logits() -> torch.Tensor:
    return torch.linspace(-2.0, 2.5, VOCAB) + 0.3 * torch.sin(torch.arange(VOCAB) * 1.7)


def _draw(params: SamplingParams, prompt=(), output=(), draws: int = DRAWS) -> torch.Tensor:
    """Empirical token frequencies of `draws` independent seeded requests in one batch."""
    rows = [
        SamplingRow(params, seed=seed, token_ids=[*prompt, *output], num_prompt_tokens=len(prompt),
                    eos_token_ids=frozenset())
        for seed in range(draws)
    ]  # fmt: skip
    logits = _logits().repeat(draws, 1)
    tokens = Sampler()(logits, rows).token_ids
    return torch.bincount(torch.tensor(tokens), minlength=VOCAB).double() / draws


def _assert_matches(freq: torch.Tensor, expected: torch.Tensor) -> None:
    expected = expected.double() / expected.sum()
    assert torch.all(freq[expected == 0] == 0), "a token outside the allowed set was sampled"
    support = expected > 0
    # chi-square with a generous fixed threshold (seeds are fixed: the test is deterministic)
    chi2 = (DRAWS * (freq[support] - expected[support]) ** 2 / expected[support]).sum().item()
    assert chi2 < 3 * int(support.sum()) + 15, f"chi2 {chi2:.1f}"


def test_temperature_scales_the_softmax():
    for temperature in (0.5, 1.0, 1.7):
        freq = _draw(SamplingParams(temperature=temperature))
        _assert_matches(freq, torch.softmax(_logits() / temperature, -1))


def test_top_k_keeps_the_k_most_likely_tokens():
    probs = torch.softmax(_logits(), -1)
    expected = torch.where(probs >= probs.topk(4).values[-1], probs, 0)
    _assert_matches(_draw(SamplingParams(top_k=4)), expected)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.softmax(_logits() / 0.8, -1)
    order = probs.argsort(descending=True)
    before = torch.cumsum(probs[order], 0) - probs[order]
    keep = order[before < 0.7]
    expected = torch.zeros_like(probs)
    expected[keep] = probs[keep]
    _assert_matches(_draw(SamplingParams(temperature=0.8, top_p=0.7)), expected)


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    probs = torch.softmax(_logits(), -1)
    expected = torch.where(probs >= 0.3 * probs.max(), probs, 0)
    _assert_matches(_draw(SamplingParams(min_p=0.3)), expected)


def test_penalties_follow_vllm_definitions():
    prompt, output = [0, 11], [3, 3, 5]
    params = SamplingParams(
        repetition_penalty=1.5, frequency_penalty=0.4, presence_penalty=0.3, logit_bias={2: 1.0}
    )
    logits = _logits().clone()
    logits[2] += 1.0
    for token in (0, 11, 3, 5):  # repetition: prompt and output tokens
        logits[token] = logits[token] / 1.5 if logits[token] > 0 else logits[token] * 1.5
    logits[3] -= 0.4 * 2 + 0.3
    logits[5] -= 0.4 * 1 + 0.3
    _assert_matches(_draw(params, prompt, output), torch.softmax(logits, -1))


def test_greedy_takes_the_argmax_after_penalties_and_min_tokens_masks_stop_tokens():
    best = int(_logits().argmax())
    row = SamplingRow(SamplingParams(temperature=0, min_tokens=2), seed=0, token_ids=[4],
                      num_prompt_tokens=1, eos_token_ids=frozenset({best}))  # fmt: skip
    assert Sampler()(_logits()[None].clone(), [row]).token_ids[0] != best
    row.params = SamplingParams(temperature=0)
    assert Sampler()(_logits()[None].clone(), [row]).token_ids[0] == best


def test_seeded_draw_depends_only_on_seed_and_output_index_not_the_batch():
    params = SamplingParams(temperature=1.0, top_p=0.9)
    alone = SamplingRow(
        params, seed=42, token_ids=[1, 2, 3], num_prompt_tokens=2, eos_token_ids=frozenset()
    )
    others = [SamplingRow(SamplingParams(temperature=0.3 + i), seed=i, token_ids=[i], num_prompt_tokens=1,
                          eos_token_ids=frozenset()) for i in range(5)]  # fmt: skip
    solo = Sampler()(_logits()[None].clone(), [alone]).token_ids[0]
    batch = Sampler()(_logits().repeat(6, 1), [*others[:3], alone, *others[3:]]).token_ids[3]
    assert solo == batch
    assert uniform_for(42, 1) == uniform_for(42, 1) != uniform_for(42, 2)


def test_logprobs_report_the_chosen_token_rank_and_top_k():
    logits = _logits()[None].clone()
    row = SamplingRow(SamplingParams(temperature=0, logprobs=3), seed=0, token_ids=[1],
                      num_prompt_tokens=1, eos_token_ids=frozenset())  # fmt: skip
    entry = Sampler()(logits, [row]).logprobs[0]
    reference = torch.log_softmax(_logits(), -1)
    assert entry.token_ids[1:] == reference.topk(3).indices.tolist()
    assert entry.ranks == [1, 1, 2, 3]
    assert abs(entry.logprobs[0] - reference.max().item()) < 1e-6


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", -1), ("max_tokens", 0), ("temperature", -0.1), ("top_p", 0.0), ("n", 0),
     ("min_p", 1.5), ("logprobs", 50), ("presence_penalty", 3.0)],
)  # fmt: skip
def test_bad_sampling_parameters_raise_an_error_naming_the_field(field, value):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: value})
    assert info.value.field == field and field in str(info.value)


def test_unknown_sampling_parameter_is_named():
    with pytest.raises(InvalidRequestError, match="bogus"):
        SamplingParams.from_dict({"temperature": 0.5, "bogus": 1})
