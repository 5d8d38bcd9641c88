"""The chunked output projection gives the full projection's logits and argmax."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.vocab_projection import VocabProjection, onednn_packing_available

pytestmark = pytest.mark.unit


def _projection(weight: torch.Tensor, vocab: int, packed: bool) -> VocabProjection:
    projection = VocabProjection(weight, vocab, chunk_rows=96)
    if not packed and projection.packed:  # the plain-slice path, as on devices without oneDNN
        projection.packed = False
        projection.refresh()
    return projection


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_chunked_logits_and_argmax_match_the_full_projection(packed: bool, rows: int):
    torch.manual_seed(rows)
    weight = torch.randn(1000, 32)  # 1000 rows of which the vocabulary is 997: padded shard
    hidden = torch.randn(rows, 32)
    projection = _projection(weight, 997, packed)
    full = hidden @ weight[:997].t()
    logits = projection.logits(hidden, out=torch.full((rows, 997), float("nan")))
    torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-4)
    assert torch.equal(projection.argmax(hidden), logits.argmax(dim=-1))


@pytest.mark.parametrize("packed", [True, False])
def test_argmax_ties_go_to_the_lowest_token_id_across_chunks(packed: bool):
    weight = torch.zeros(500, 8)
    weight[[7, 150, 390], 0] = 2.0  # equal best logits in the first, second and fifth chunks
    weight[[200, 260], 1] = 3.0
    hidden = torch.tensor([[1.0] + [0.0] * 7, [0.0, 1.0] + [0.0] * 6, [0.0] * 8])
    assert _projection(weight, 500, packed).argmax(hidden).tolist() == [7, 200, 0]


def test_the_packed_chunks_follow_the_weight_after_refresh():
    weight = torch.randn(300, 16)
    projection = VocabProjection(weight, 300, chunk_rows=64)
    hidden = torch.randn(3, 16)
    weight.mul_(-1)  # an in-place update (a hot weight swap) bumps the version counter
    assert projection.is_stale()
    projection.refresh()
    assert not projection.is_stale()
    assert torch.equal(projection.argmax(hidden), (hidden @ weight.t()).argmax(dim=-1))


def test_oneDNN_packing_is_used_for_fp32_cpu_weights_only():
    assert onednn_packing_available(torch.zeros(4, 4)) == torch.backends.mkldnn.is_available()
    assert not onednn_packing_available(torch.zeros(4, 4, dtype=torch.bfloat16))
