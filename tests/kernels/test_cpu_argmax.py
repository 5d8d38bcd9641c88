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
