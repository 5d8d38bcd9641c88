"""RMSNorm (+ residual), RoPE, KV-cache writes and top-k/top-p in Triton (interpreter)."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.attention import store_kv, store_kv_ref
from oss_serve.kernels.fused import add_rms_norm, add_rms_norm_ref, rope_qk_, rope_qk_ref_
from oss_serve.kernels.norm import rms_norm, rms_norm_ref
from oss_serve.kernels.rope import apply_rope, apply_rope_ref
from oss_serve.kernels.sampling import top_k_top_p, top_k_top_p_ref

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("triton_interpreter")]
TOLERANCE = {torch.float32: 1e-6, torch.float16: 1e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hidden", [40, 64])
def test_rms_norm_and_its_fused_residual_add_match_torch(dtype, hidden):
    g = torch.Generator().manual_seed(hidden)
    x, residual = (torch.randn(2, 5, hidden, generator=g) * 3).to(dtype)
    weight = torch.rand(hidden, generator=g) + 0.5
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(
        rms_norm(x, weight, 1e-5), rms_norm_ref(x, weight, 1e-5), atol=tol, rtol=tol
    )
    normed, summed = add_rms_norm(x, residual, weight, 1e-5)
    expected_normed, expected_sum = add_rms_norm_ref(x, residual, weight, 1e-5)
    assert torch.equal(summed, expected_sum)  # the sum is rounded exactly like x + residual
    torch.testing.assert_close(normed, expected_normed, atol=tol, rtol=tol)


@pytest.mark.parametrize(("q_heads", "kv_heads", "head_dim"), [(8, 1, 64), (3, 3, 8)])
def test_rope_matches_torch_and_rotates_q_and_k_in_place(q_heads, kv_heads, head_dim):
    g = torch.Generator().manual_seed(head_dim)
    q = torch.randn(7, q_heads, head_dim, generator=g)
    k = torch.randn(7, kv_heads, head_dim, generator=g)
    angles = torch.rand(7, head_dim // 2, generator=g) * 50
    cos, sin = angles.cos() * 1.35, angles.sin() * 1.35
    torch.testing.assert_close(apply_rope(q, cos, sin), apply_rope_ref(q, cos, sin))
    expected_q, expected_k = rope_qk_ref_(q.clone(), k.clone(), cos, sin)
    q_ptr, k_ptr = q.data_ptr(), k.data_ptr()
    rotated_q, rotated_k = rope_qk_(q, k, cos, sin)
    assert rotated_q.data_ptr() == q_ptr and rotated_k.data_ptr() == k_ptr
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(k, expected_k)


def test_store_kv_writes_every_slot_and_skips_minus_one():
    g = torch.Generator().manual_seed(0)
    cache = torch.full((2, 6, 4, 2, 16), float("nan"))
    key, value = torch.randn(2, 9, 2, 16, generator=g)
    slots = torch.tensor([5, 6, 7, 8, -1, 0, 23, 12, -1])
    expected = cache.clone()
    store_kv_ref(expected, key, value, slots)
    store_kv(cache, key, value, slots)
    assert torch.equal(cache.isnan(), expected.isnan())
    assert torch.equal(cache.nan_to_num(), expected.nan_to_num())


def _probs(rows: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, vocab, generator=g) * 3, dim=-1)


def test_top_k_top_p_keeps_exactly_what_a_stable_sort_keeps():
    probs = _probs(6, 700, seed=1)
    probs[1, 100:200] = 0.0  # zeros after min_p
    probs[2, :] = probs[2, 0]  # all tied: the lowest token ids win
    probs[3, 10:20] = probs[3].max()  # top-k cuts through ties at the top
    top_k = torch.tensor([5, 0, 17, 5, 700, 1])
    top_p = torch.tensor([1.0, 0.8, 0.5, 1.0, 0.95, 0.7])
    out = top_k_top_p(probs, top_k, top_p)
    expected = top_k_top_p_ref(probs, top_k, top_p)
    assert torch.equal(out > 0, expected > 0)
    assert torch.equal(out, expected)
    assert (out[3] > 0).nonzero().flatten().tolist() == [10, 11, 12, 13, 14]


def test_top_k_top_p_over_the_full_gpt_oss_vocabulary():
    probs = _probs(1, 201088, seed=2)
    top_k, top_p = torch.tensor([50]), torch.tensor([0.9])
    out = top_k_top_p(probs, top_k, top_p)
    assert torch.equal(out, top_k_top_p_ref(probs, top_k, top_p))
    assert 1 <= int((out > 0).sum()) <= 50
