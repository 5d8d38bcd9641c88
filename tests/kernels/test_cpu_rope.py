"""The C rotary embedding for the CPU: bit for bit the torch reference, in place."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels import cpu_rope, native_build
from oss_serve.kernels.fused import rope_qk_
from oss_serve.kernels.rope import apply_rope_ref

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not native_build.native_kernels_enabled(), reason="native kernels off"),
]


@pytest.mark.parametrize(
    ("tokens", "q_heads", "kv_heads", "dim"), [(1, 8, 2, 64), (300, 64, 8, 64), (7, 4, 4, 18)]
)
@torch.inference_mode()
def test_q_and_k_rotate_in_place_exactly_as_the_reference(tokens, q_heads, kv_heads, dim):
    g = torch.Generator().manual_seed(tokens)
    fused = torch.randn(tokens, (q_heads + kv_heads) * dim, generator=g)  # one projection's rows
    q = fused[:, : q_heads * dim].view(tokens, q_heads, dim)
    k = fused[:, q_heads * dim :].view(tokens, kv_heads, dim)
    angles = torch.rand(tokens, dim // 2, generator=g) * 1000
    cos, sin = angles.cos() * 1.3, angles.sin() * 1.3
    expected = apply_rope_ref(q, cos, sin), apply_rope_ref(k, cos, sin)
    assert cpu_rope.supports(q, k, cos, sin)
    rotated = rope_qk_(q, k, cos, sin)
    assert rotated[0].data_ptr() == q.data_ptr() and rotated[1].data_ptr() == k.data_ptr()
    assert torch.equal(q, expected[0]) and torch.equal(k, expected[1])


def test_what_it_leaves_to_torch():
    q, k = torch.randn(3, 4, 8), torch.randn(3, 2, 8)
    cos = sin = torch.randn(3, 4)
    with torch.inference_mode():
        assert not cpu_rope.supports(q.transpose(0, 1), k, cos, sin)  # heads not packed
        assert not cpu_rope.supports(q.half(), k.half(), cos, sin)
    assert not cpu_rope.supports(q, k, cos, sin)  # autograd on: the reference path
