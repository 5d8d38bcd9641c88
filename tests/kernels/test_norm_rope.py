"""RMSNorm and RoPE against transformers' gpt-oss modules."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.norm import rms_norm
from oss_serve.kernels.rope import apply_rope

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_transformers_and_keeps_the_input_dtype(dtype):
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRMSNorm

    norm = GptOssRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(5, 48) * 3).to(dtype)
    out = rms_norm(x, norm.weight, 1e-5)
    assert out.dtype == dtype
    assert torch.equal(out, norm(x))


def test_rope_matches_transformers_half_split_rotation():
    from transformers.models.gpt_oss.modeling_gpt_oss import _apply_rotary_emb

    x = torch.randn(6, 3, 16)
    angles = torch.randn(6, 8)
    cos, sin = angles.cos() * 1.3, angles.sin() * 1.3
    expected = _apply_rotary_emb(x.transpose(0, 1), cos[None], sin[None]).transpose(0, 1)
    torch.testing.assert_close(apply_rope(x, cos, sin), expected)
    unscaled = apply_rope(x, angles.cos(), angles.sin())
    torch.testing.assert_close(unscaled.norm(dim=-1), x.norm(dim=-1))  # a pure rotation
