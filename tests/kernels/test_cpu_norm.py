"""The C RMSNorm (and residual add) for the CPU against the torch references."""

from __future__ import annotations

import pytest
import torch

from oss_serve.kernels import cpu_norm, native_build
from oss_serve.kernels.fused import add_rms_norm, add_rms_norm_ref
from oss_serve.kernels.norm import rms_norm, rms_norm_ref

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not native_build.native_kernels_enabled(), reason="native kernels off"),
]


@pytest.mark.parametrize(("rows", "dim"), [(1, 256), (300, 2880), (5, 7)])
@torch.inference_mode()
def test_the_kernel_equals_the_reference(rows, dim):
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(rows, dim, generator=g) * 5
    residual = torch.randn(rows, dim, generator=g)
    weight = torch.rand(dim, generator=g) + 0.5
    x_before, residual_before = x.clone(), residual.clone()
    assert cpu_norm.supports(x, residual, weight)
    torch.testing.assert_close(rms_norm(x, weight, 1e-5), rms_norm_ref(x, weight, 1e-5))
    normed, summed = add_rms_norm(x, residual, weight, 1e-5)
    expected_normed, expected_summed = add_rms_norm_ref(x, residual, weight, 1e-5)
    assert torch.equal(summed, expected_summed)  # the sum is rounded as the reference rounds it
    torch.testing.assert_close(normed, expected_normed)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)


def test_what_it_leaves_to_torch():
    x, weight = torch.randn(2, 8), torch.randn(8)
    with torch.inference_mode():
        assert not cpu_norm.supports(x.half(), weight)
    assert not cpu_norm.supports(x, weight)  # autograd on: the reference path
