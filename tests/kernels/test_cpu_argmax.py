"""The C running argmax over logit chunks against torch.argmax."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels import cpu_argmax, native_build

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not native_build.native_kernels_enabled(), reason="native kernels off"),
]


@pytest.mark.parametrize(("rows", "cols", "chunk"), [(1, 1000, 300), (7, 4099, 1024), (64, 50, 7)])
def test_chunk_by_chunk_equals_torch_argmax(rows, cols, chunk):
    g = torch.Generator().manual_seed(rows)
    logits = torch.randn(rows, cols, generator=g)
    logits[0, 5] = logits[0, cols - 3] = logits.max() + 1  # a tie across chunks: the first wins
    wide = torch.randn(rows, cols + 9, generator=g)
    wide[:, :cols] = logits  # chunks are strided views of a wider matrix
    best = torch.full((rows,), float("-inf"))
    best_ids = torch.zeros(rows, dtype=torch.int64)
    for start in range(0, cols, chunk):
        part = wide[:, start : min(start + chunk, cols)]
        cpu_argmax.update(part, start, best, best_ids)
    assert torch.equal(best_ids, logits.argmax(dim=-1))
    assert torch.equal(best, logits.amax(dim=-1))
    assert best_ids[0] == 5


@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize(("vocab", "dim"), [(10_003, 64), (4101, 24), (5, 8)])
def test_reading_the_weight_once_equals_torch_argmax(monkeypatch, rows, vocab, dim):
    """Vocabularies that are no multiple of four or of the threads' shares, dims that are no
    multiple of eight (the generic loop), and a tie between far apart ids (the first wins)."""
    monkeypatch.setattr(cpu_argmax, "MAX_DIRECT_ROWS", 4)
    g = torch.Generator().manual_seed(vocab + rows)
    weight = torch.randn(vocab + 3, dim, generator=g)  # rows past vocab_size are ignored
    hidden = torch.randn(rows, dim, generator=g)
    weight[vocab - 1] = weight[1] = hidden[0] * 10  # the same, highest logit for row 0
    ids = cpu_argmax.vocab_argmax(hidden, weight, vocab)
    assert ids is not None
    # row 0's tie is exact here; a library GEMM may round the two copies apart
    assert ids[0] == 1
    assert torch.equal(ids[1:], (hidden[1:] @ weight[:vocab].T).argmax(dim=-1))


def test_the_direct_read_takes_only_what_it_handles():
    weight, hidden = torch.randn(100, 16), torch.randn(1, 16)
    assert cpu_argmax.vocab_argmax(hidden, weight, 100) is not None
    assert (
        cpu_argmax.vocab_argmax(hidden.repeat(cpu_argmax.MAX_DIRECT_ROWS + 1, 1), weight, 100)
        is None
    )
    assert cpu_argmax.vocab_argmax(hidden.half(), weight.half(), 100) is None
    assert cpu_argmax.vocab_argmax(hidden, weight.t().contiguous().t(), 100) is None
