"""The int8-screened greedy argmax is the exact fp32 argmax, ties to the lowest id."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels import vocab_screen
from oss_serve.kernels.vocab_projection import VocabProjection

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(
        not vocab_screen.available(torch.zeros(4, 4)), reason="no x86 int8 GEMM or C compiler"
    ),
]


def _exact(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (hidden.double() @ weight.double().t()).argmax(dim=-1)


@pytest.mark.parametrize("scale", [0.05, 1.0, 40.0])
def test_every_int8_logit_lies_within_the_bound_the_screen_assumes(scale: float):
    """The bound of the module docstring, against fbgemm's actual int8 logits: a torch
    whose dynamic quantization clipped or rounded more coarsely would fail here."""
    torch.manual_seed(int(scale * 100))
    weight = torch.randn(3000, 96) * 0.03
    weight[17] *= 50  # one large row, one tiny one
    weight[18] *= 1e-4
    hidden = torch.randn(32, 96) * scale
    hidden[3, 5] = 12 * scale  # an outlier sets the activations' step for the whole batch
    screen = vocab_screen.Int8VocabScreen(weight, 3000, chunk_rows=1024)
    approx = torch.cat(
        [torch.ops.quantized.linear_dynamic(hidden, packed, True) for packed in screen.chunks],
        dim=1,
    ).double()
    exact = hidden.double() @ weight.double().t()
    span = float(hidden.max().clamp(min=0) - hidden.min().clamp(max=0))
    bound = (
        0.5 * screen.col_scale.double()[None] * hidden.double().abs().sum(1, keepdim=True)
        + 0.5 * span / vocab_screen.ACTIVATION_LEVELS * screen.col_l1.double()[None]
    )
    excess = (exact - approx).abs() - bound
    assert float(excess.max()) <= 1e-6 * float(exact.abs().max())


@pytest.mark.parametrize("rows", [1, 3])
def test_the_few_row_kernel_keeps_within_its_per_row_bound(rows: int):
    """The few-row C kernel quantizes each row with its own scale (max|h| / 127)."""
    torch.manual_seed(rows)
    weight = torch.randn(2000, 96) * 0.03
    hidden = torch.randn(rows, 96) * torch.tensor([0.01, 1.0, 30.0])[:rows, None]
    screen = vocab_screen.Int8VocabScreen(weight, 2000, chunk_rows=1024)
    approx, row_scale = torch.empty(rows, 2000), torch.empty(rows)
    kernel = vocab_screen._small_kernel()
    assert kernel is not None
    status = kernel(
        hidden.data_ptr(), rows, 96, screen.quantized.data_ptr(), screen.col_scale.data_ptr(),
        2000, approx.data_ptr(), row_scale.data_ptr(), 1,
    )  # fmt: skip
    assert status == 0
    torch.testing.assert_close(row_scale, hidden.abs().amax(dim=1) / 127)
    exact = hidden.double() @ weight.double().t()
    bound = (
        0.5 * screen.col_scale.double()[None] * hidden.double().abs().sum(1, keepdim=True)
        + 0.5 * row_scale.double()[:, None] * screen.col_l1.double()[None]
    )
    excess = (exact - approx.double()).abs() - bound
    assert float(excess.max()) <= 1e-6 * float(exact.abs().max())


@pytest.mark.parametrize("rows", [1, 4, 7, 64])
@pytest.mark.parametrize("dim", [64, 256, 100])
def test_random_rows_get_the_exact_argmax(rows: int, dim: int):
    torch.manual_seed(rows * dim)
    weight = torch.randn(5003, dim) * 0.02  # chunks of 1024 with a short last one
    hidden = torch.randn(rows, dim)
    hidden[0, 1] = 9.0  # one outlier widens the activations' int8 step for every row
    screen = vocab_screen.Int8VocabScreen(weight, 5003, chunk_rows=1024)
    assert torch.equal(screen.argmax(hidden), _exact(hidden, weight))


@pytest.mark.parametrize("rows", [4, 12])  # the few-row C kernel, then fbgemm's GEMM
def test_rows_closer_than_the_int8_step_are_told_apart(rows: int):
    torch.manual_seed(0)
    weight = torch.randn(3000, 128) * 0.02
    hidden = torch.randn(rows, 128)
    winners = _exact(hidden[:4], weight)
    assert int(winners.max()) < 2990
    for row, winner in enumerate(winners.tolist()):
        # a later rival: the winner's row plus a twentieth of its int8 step, signed to raise
        # this row's logit, except at its largest weight (so the same scale). Both rows have
        # the same int8 copy and approximate logit; only the fp32 dot products decide.
        step = float(weight[winner].abs().max()) / 127
        nudge = 0.05 * step * torch.sign(hidden[row])
        units = weight[winner] / step
        nudge[((units + nudge / step) - units.round()).abs() >= 0.45] = 0.0  # same rounding
        nudge[weight[winner].abs().argmax()] = 0.0
        weight[2990 + row] = weight[winner] + nudge
    screen = vocab_screen.Int8VocabScreen(weight, 3000, chunk_rows=512)
    expected = _exact(hidden, weight)
    assert expected[:4].tolist() == [2990, 2991, 2992, 2993]
    assert torch.equal(screen.argmax(hidden), expected)


def test_equal_logits_go_to_the_lowest_token_id_across_chunks():
    torch.manual_seed(1)
    weight = torch.randn(4000, 64) * 0.02
    best = torch.randn(64)
    weight[[3500, 900, 2100]] = best  # the same row three times, in three chunks
    hidden = best[None] * 10
    screen = vocab_screen.Int8VocabScreen(weight, 4000, chunk_rows=1000)
    assert screen.argmax(hidden).tolist() == [900]


def test_a_row_with_too_many_candidates_falls_back_to_the_full_projection():
    weight = torch.zeros(vocab_screen.CAPACITY + 600, 32)
    weight[5, 0] = 1e-3  # one token just above thousands of ties
    hidden = torch.zeros(2, 32)
    hidden[0, 0] = 1.0
    hidden[1, 1] = 1.0  # all logits 0: every token is a candidate
    screen = vocab_screen.Int8VocabScreen(weight, weight.shape[0], chunk_rows=1024)
    assert screen.argmax(hidden).tolist() == [5, -1]
    projection = VocabProjection(weight, weight.shape[0], chunk_rows=1024)
    assert projection.screen is not None
    assert projection.argmax(hidden).tolist() == [5, 0]


def test_non_finite_hidden_states_are_not_screened():
    weight = torch.randn(100, 16)
    hidden = torch.randn(2, 16)
    hidden[1, 3] = float("inf")
    assert vocab_screen.Int8VocabScreen(weight, 100, chunk_rows=64).argmax(hidden) is None


def test_the_screen_follows_the_weight_after_refresh():
    torch.manual_seed(2)
    weight = torch.randn(2000, 32)
    projection = VocabProjection(weight, 2000, chunk_rows=512)
    hidden = torch.randn(5, 32)
    weight.mul_(-1)
    projection.refresh()
    assert torch.equal(projection.argmax(hidden), _exact(hidden, weight))


def test_only_contiguous_fp32_cpu_weights_are_screened():
    assert not vocab_screen.available(torch.zeros(4, 4, dtype=torch.bfloat16))
    assert not vocab_screen.available(torch.zeros(4, 8)[:, :4])
