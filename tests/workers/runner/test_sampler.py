"""Sampler: statistical checks against reference distributions computed here, and determinism.

The sampler runs where the logits are: every behaviour test runs on each device this machine
has (`device`: the CPU always, CUDA with the Triton top-k/top-p kernel when present).
"""

from __future__ import annotations

import pytest
import torch

from oss_serve.workers.engine.sampling_params import InvalidRequestError, SamplingParams
from oss_serve.workers.runner.sampler import (
    Sampler,
    SamplingRow,
    apply_penalties,
    inverse_cdf_sample,
    to_host,
    uniform_for,
)

pytestmark = pytest.mark.unit
VOCAB = 12
DRAWS = 6000


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here"))]  # fmt: skip


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def _logits(device: str = "cpu") -> torch.Tensor:
    values = torch.linspace(-2.0, 2.5, VOCAB) + 0.3 * torch.sin(torch.arange(VOCAB) * 1.7)
    return values.to(device)


def _draw(
    params: SamplingParams, prompt=(), output=(), draws: int = DRAWS, device: str = "cpu"
) -> torch.Tensor:
    """Empirical token frequencies of `draws` independent seeded requests in one batch."""
    rows = [
        SamplingRow(params, seed=seed, token_ids=[*prompt, *output], num_prompt_tokens=len(prompt),
                    eos_token_ids=frozenset())
        for seed in range(draws)
    ]  # fmt: skip
    logits = _logits(device).repeat(draws, 1)
    tokens = Sampler()(logits, rows).token_ids
    return torch.bincount(torch.tensor(tokens), minlength=VOCAB).double() / draws


def _assert_matches(freq: torch.Tensor, expected: torch.Tensor) -> None:
    expected = expected.double() / expected.sum()
    assert torch.all(freq[expected == 0] == 0), "a token outside the allowed set was sampled"
    support = expected > 0
    # chi-square with a generous fixed threshold (seeds are fixed: the test is deterministic)
    chi2 = (DRAWS * (freq[support] - expected[support]) ** 2 / expected[support]).sum().item()
    assert chi2 < 3 * int(support.sum()) + 15, f"chi2 {chi2:.1f}"


def test_temperature_scales_the_softmax(device):
    for temperature in (0.5, 1.0, 1.7):
        freq = _draw(SamplingParams(temperature=temperature), device=device)
        _assert_matches(freq, torch.softmax(_logits() / temperature, -1))


def test_top_k_keeps_the_k_most_likely_tokens(device):
    probs = torch.softmax(_logits(), -1)
    expected = torch.where(probs >= probs.topk(4).values[-1], probs, 0)
    _assert_matches(_draw(SamplingParams(top_k=4), device=device), expected)


def test_top_p_keeps_the_smallest_set_reaching_p(device):
    probs = torch.softmax(_logits() / 0.8, -1)
    order = probs.argsort(descending=True)
    before = torch.cumsum(probs[order], 0) - probs[order]
    keep = order[before < 0.7]
    expected = torch.zeros_like(probs)
    expected[keep] = probs[keep]
    _assert_matches(_draw(SamplingParams(temperature=0.8, top_p=0.7), device=device), expected)


def test_min_p_drops_tokens_below_a_fraction_of_the_best(device):
    probs = torch.softmax(_logits(), -1)
    expected = torch.where(probs >= 0.3 * probs.max(), probs, 0)
    _assert_matches(_draw(SamplingParams(min_p=0.3), device=device), expected)


def test_penalties_follow_vllm_definitions(device):
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
    _assert_matches(_draw(params, prompt, output, device=device), torch.softmax(logits, -1))


def test_greedy_takes_the_argmax_after_penalties_and_min_tokens_masks_stop_tokens(device):
    best = int(_logits().argmax())
    row = SamplingRow(SamplingParams(temperature=0, min_tokens=2), seed=0, token_ids=[4],
                      num_prompt_tokens=1, eos_token_ids=frozenset({best}))  # fmt: skip
    assert Sampler()(_logits(device)[None].clone(), [row]).token_ids[0] != best
    row.params = SamplingParams(temperature=0)
    assert Sampler()(_logits(device)[None].clone(), [row]).token_ids[0] == best


def test_seeded_draw_depends_only_on_seed_and_output_index_not_the_batch(device):
    params = SamplingParams(temperature=1.0, top_p=0.9)
    alone = SamplingRow(
        params, seed=42, token_ids=[1, 2, 3], num_prompt_tokens=2, eos_token_ids=frozenset()
    )
    others = [SamplingRow(SamplingParams(temperature=0.3 + i), seed=i, token_ids=[i], num_prompt_tokens=1,
                          eos_token_ids=frozenset()) for i in range(5)]  # fmt: skip
    solo = Sampler()(_logits(device)[None].clone(), [alone]).token_ids[0]
    batch = Sampler()(_logits(device).repeat(6, 1), [*others[:3], alone, *others[3:]]).token_ids[3]
    assert solo == batch
    assert uniform_for(42, 1) == uniform_for(42, 1) != uniform_for(42, 2)


def test_logprobs_report_the_chosen_token_rank_and_top_k(device):
    logits = _logits(device)[None].clone()
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


def _dense_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """vLLM's penalties over whole-vocabulary count tensors (the plain way)."""
    vocab = logits.shape[-1]

    def counts(lists):
        out = torch.zeros(len(lists), vocab)
        for row, tokens in enumerate(lists):
            for token in tokens:
                out[row, token] += 1
        return out

    output = counts([r.output_token_ids for r in rows])
    seen = (counts([r.prompt_token_ids for r in rows]) > 0) | (output > 0)
    repetition, frequency, presence = (
        torch.tensor([getattr(r.params, name) for r in rows]).unsqueeze(1)
        for name in ("repetition_penalty", "frequency_penalty", "presence_penalty")
    )
    penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(seen, penalised, logits)
    return logits - frequency * output - presence * (output > 0).to(logits.dtype)


def test_sparse_penalties_equal_the_whole_vocabulary_formula_bit_for_bit(device):
    g = torch.Generator().manual_seed(0)
    vocab = 3000
    rows = [
        SamplingRow(
            SamplingParams(repetition_penalty=rep, frequency_penalty=freq, presence_penalty=pres),
            seed=0,
            token_ids=torch.randint(0, vocab, (n,), generator=g).tolist(),
            num_prompt_tokens=n // 2,
            eos_token_ids=frozenset(),
        )
        for rep, freq, pres, n in ((1.3, 0.0, 0.0, 40), (1.0, 0.7, -0.4, 9), (0.8, -1.1, 2.0, 301))
    ]
    logits = torch.randn(len(rows), vocab, generator=g) * 3
    expected = _dense_penalties(logits, rows)
    logits = logits.to(device)
    for i, row in enumerate(rows):
        apply_penalties(logits[i], row)
    assert torch.equal(logits.cpu(), expected)


def test_the_chunked_inverse_cdf_draws_the_token_of_the_whole_cumulative_sum(device):
    g = torch.Generator().manual_seed(1)
    for vocab in (7, 1024, 3000, 201088):
        probs = torch.rand(6, vocab, generator=g) ** 4
        probs[probs < 0.3] = 0  # filtered tokens are never drawn
        probs[5] = 0
        probs[5, vocab - 1] = 1.0  # all mass on the last token
        uniforms = torch.rand(6, generator=g).tolist()
        uniforms[0] = 0.0
        cdf = torch.cumsum(probs.double(), dim=-1)
        target = torch.tensor(uniforms, dtype=torch.float64).unsqueeze(1) * cdf[:, -1:]
        expected = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_max(vocab - 1)
        drawn = inverse_cdf_sample(probs.to(device), uniforms).cpu()
        assert drawn.tolist() == expected.tolist()
        assert bool((probs.gather(1, drawn.unsqueeze(1)) > 0).all())


def test_the_packed_host_transfer_gives_back_ids_ranks_and_logprobs_exactly():
    ids = torch.tensor([0, 7, 201087], dtype=torch.long)
    logprobs = torch.tensor([-0.0, -1e-30, -87.33654], dtype=torch.float32)
    top = torch.randn(3, 5, dtype=torch.float32)
    back = to_host(ids, logprobs, top, pack=True)
    for original, copy in zip((ids, logprobs, top), back, strict=True):
        assert copy.dtype == original.dtype and torch.equal(copy, original)


def test_sampling_with_logprobs_gives_the_same_result_on_every_device(device):
    rows = [
        SamplingRow(SamplingParams(temperature=t, top_k=k, logprobs=lp, seed=s), seed=s,
                    token_ids=[1, 2], num_prompt_tokens=1, eos_token_ids=frozenset())
        for t, k, lp, s in ((0, 0, 2, 0), (0.9, 5, None, 1), (1.3, 0, 3, 2))
    ]  # fmt: skip
    logits = torch.randn(3, 4000, generator=torch.Generator().manual_seed(3))
    on_cpu = Sampler()(logits.clone(), rows)
    on_device = Sampler()(logits.clone().to(device), rows)
    assert on_device.token_ids == on_cpu.token_ids
    assert on_device.logprobs[1] is None
    for cpu_entry, device_entry in zip(on_cpu.logprobs, on_device.logprobs, strict=True):
        if cpu_entry is None:
            continue
        assert device_entry.token_ids == cpu_entry.token_ids
        assert device_entry.ranks == cpu_entry.ranks
        assert device_entry.logprobs == pytest.approx(cpu_entry.logprobs, abs=1e-5)
