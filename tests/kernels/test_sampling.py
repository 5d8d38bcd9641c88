"""The torch fast path of top-k / top-p equals the sorting reference, including the rows it
cannot settle from its candidates (flat distributions, ties at the edge, large k)."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels import sampling
from oss_serve.kernels.sampling import top_k_top_p_ref, top_k_top_p_torch

pytestmark = pytest.mark.unit


def _probs(rows: int, vocab: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, vocab, generator=g) * scale, dim=-1)


def test_peaked_flat_and_tied_rows_keep_what_the_stable_sort_keeps(monkeypatch):
    monkeypatch.setattr(sampling, "CANDIDATE_COUNTS", (16, 64))  # small, to reach every branch
    probs = _probs(9, 700, scale=4.0, seed=1)
    probs[1] = 1.0 / 700  # flat: the kept run reaches past every candidate set
    probs[2, 100:200] = 0.0  # zeros after min_p
    probs[3, 10:40] = probs[3].max()  # a tie straddling the candidates' edge
    probs[4, :] = probs[4, 0]  # everything tied: the lowest token ids win
    top_k = torch.tensor([0, 0, 17, 20, 5, 100, 700, 0, 1])
    top_p = torch.tensor([0.9, 0.5, 0.8, 1.0, 1.0, 0.95, 0.3, 1.0, 0.7], dtype=torch.float64)
    out = top_k_top_p_torch(probs, top_k, top_p)
    assert torch.equal(out, top_k_top_p_ref(probs, top_k, top_p))
    assert (out[3] > 0).nonzero().flatten().tolist() == list(range(10, 30))
    assert torch.equal(out[7], probs[7])  # nothing to filter


def test_the_full_gpt_oss_vocabulary():
    probs = torch.cat([_probs(3, 201088, scale=6.0, seed=2), _probs(1, 201088, 0.5, seed=3)])
    top_k = torch.tensor([50, 0, 5000, 0])
    top_p = torch.tensor([0.9, 0.95, 0.99, 0.9], dtype=torch.float64)
    out = top_k_top_p_torch(probs, top_k, top_p)
    assert torch.equal(out, top_k_top_p_ref(probs, top_k, top_p))
    assert 1 <= int((out[0] > 0).sum()) <= 50
