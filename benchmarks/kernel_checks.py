"""Each Triton kernel against its torch reference at small shapes, on this machine.

Run by `python -m oss_serve.benchmarks.kernels` on CPU, where the kernels execute under the
Triton interpreter (TRITON_INTERPRET=1 set before anything imports triton): fp32 inputs
(the interpreter rounds bf16 wrongly), the reference's exact semantics, gpt-oss head
shapes where they fit. The thorough, randomized versions are tests/kernels/test_triton_*.
"""

from __future__ import annotations

import warnings

import torch

Check = tuple[str, float, float]  # (what, max |Triton - torch|, tolerance)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _moe_checks(g: torch.Generator) -> list[Check]:
    from oss_serve.kernels.moe import moe_experts, moe_experts_ref, route, route_ref
    from oss_serve.kernels.mxfp4 import quantize_mxfp4

    logits = torch.randn(37, 32, generator=g)
    (weights, ids), (ref_weights, ref_ids) = route(logits, 4), route_ref(logits, 4)
    route_error = _max_diff(weights, ref_weights) if torch.equal(ids, ref_ids) else float("inf")
    checks = [("route (top-4 of 32, 37 tokens)", route_error, 1e-6)]
    x = torch.randn(45, 64, generator=g)
    w1, w2 = torch.randn(8, 128, 64, generator=g) * 0.3, torch.randn(8, 64, 64, generator=g) * 0.3
    b1, b2 = torch.randn(8, 128, generator=g), torch.randn(8, 64, generator=g)
    (q1, s1), (q2, s2) = quantize_mxfp4(w1), quantize_mxfp4(w2)
    weights, ids = route_ref(torch.randn(45, 16, generator=g), 4)
    for label, (up, up_scales, down, down_scales) in (
        ("mxfp4", (q1, s1, q2, s2)),
        ("dense", (w1, None, w2, None)),
    ):
        args = (x, weights, ids, up, up_scales, b1, down, down_scales, b2)
        # this rank holds experts 8..15 of 16 (expert parallel, rank 2 of 2)
        out = moe_experts(*args, swiglu_alpha=1.702, swiglu_limit=7.0, expert_start=8)
        expected = moe_experts_ref(*args, swiglu_alpha=1.702, swiglu_limit=7.0, expert_start=8)
        error = _max_diff(out, expected)
        checks.append((f"moe_experts {label} (45 tokens, EP 8 of 16)", error, 2e-5))
    return checks


def _attention_checks(g: torch.Generator) -> list[Check]:
    from oss_serve.kernels import triton_attention
    from oss_serve.kernels.attention import (
        paged_attention_ref,
        varlen_attention,
        varlen_attention_ref,
    )

    block_size, num_blocks = 16, 40
    cache = torch.randn(2, num_blocks, block_size, 1, 64, generator=g)
    table = torch.randperm(num_blocks, generator=g).to(torch.int32).view(4, 10)
    sinks = torch.randn(8, generator=g)
    checks = []
    for label, q_lens, seq_lens, window, splits in (
        ("paged decode, split-K 3", [1, 1, 1, 1], [1, 17, 129, 160], None, 3),
        ("paged decode, window 128", [1, 1, 1, 1], [1, 17, 129, 160], 128, 1),
        ("paged prefill + cached prefix, window 16", [7, 1, 20, 2], [7, 33, 60, 150], 16, 1),
    ):
        starts = torch.tensor(
            [0, *torch.cumsum(torch.tensor(q_lens), 0).tolist()], dtype=torch.int32
        )
        query = torch.randn(sum(q_lens), 8, 64, generator=g)
        args = (query, cache, table, torch.tensor(seq_lens, dtype=torch.int32), starts, sinks)
        out = triton_attention.paged_attention(
            *args, sm_scale=0.125, sliding_window=window, max_query_len=max(q_lens),
            num_splits=splits,
        )  # fmt: skip
        expected = paged_attention_ref(
            *args, sm_scale=0.125, sliding_window=window, max_query_len=max(q_lens)
        )
        checks.append((f"{label} (GQA 8)", _max_diff(out, expected), 2e-5))
    q, k, v = torch.randn(30, 4, 16, generator=g), *torch.randn(2, 30, 2, 16, generator=g)
    starts = torch.tensor([0, 1, 12, 30], dtype=torch.int32)
    out = varlen_attention(q, k, v, starts, sinks[:4], sm_scale=0.25, sliding_window=5)
    expected = varlen_attention_ref(q, k, v, starts, sinks[:4], sm_scale=0.25, sliding_window=5)
    return [*checks, ("varlen attention, window 5", _max_diff(out, expected), 2e-5)]


def _small_checks(g: torch.Generator) -> list[Check]:
    from oss_serve.kernels.attention import store_kv, store_kv_ref
    from oss_serve.kernels.fused import add_rms_norm, add_rms_norm_ref, rope_qk_, rope_qk_ref_
    from oss_serve.kernels.mxfp4 import dequantize_mxfp4, dequantize_mxfp4_ref
    from oss_serve.kernels.sampling import top_k_top_p, top_k_top_p_ref

    blocks = torch.randint(0, 256, (256, 2, 16), dtype=torch.uint8, generator=g)
    scales = torch.arange(256, dtype=torch.uint8)[:, None].expand(256, 2).contiguous()
    out, expected = (
        dequantize_mxfp4(blocks, scales, torch.float32),
        dequantize_mxfp4_ref(blocks, scales, torch.float32),
    )
    checks: list[Check] = [
        (
            "dequantize_mxfp4 (differing bits, all scales)",
            float((out.view(torch.int32) != expected.view(torch.int32)).sum()),
            0,
        ),
    ]
    x, residual = torch.randn(2, 9, 2880, generator=g)
    weight = torch.rand(2880, generator=g) + 0.5
    normed, summed = add_rms_norm(x, residual, weight, 1e-5)
    ref_normed, ref_summed = add_rms_norm_ref(x, residual, weight, 1e-5)
    checks.append(
        (
            "add_rms_norm (hidden 2880)",
            max(_max_diff(normed, ref_normed), _max_diff(summed, ref_summed)),
            1e-5,
        )
    )
    q, k = torch.randn(5, 64, 64, generator=g), torch.randn(5, 8, 64, generator=g)
    angles = torch.rand(5, 32, generator=g) * 100
    expected_q, expected_k = rope_qk_ref_(q.clone(), k.clone(), angles.cos(), angles.sin())
    rope_qk_(q, k, angles.cos(), angles.sin())
    checks.append(
        ("rope_qk_ in place", max(_max_diff(q, expected_q), _max_diff(k, expected_k)), 1e-5)
    )
    cache, ref_cache = torch.zeros(2, 6, 16, 8, 64), torch.zeros(2, 6, 16, 8, 64)
    key, value = torch.randn(2, 20, 8, 64, generator=g)
    slots = torch.randperm(96, generator=g)[:20]
    slots[3] = -1
    store_kv(cache, key, value, slots)
    store_kv_ref(ref_cache, key, value, slots)
    checks.append(("store_kv (slot -1 skipped)", _max_diff(cache, ref_cache), 0))
    probs = torch.softmax(torch.randn(3, 201088, generator=g) * 3, dim=-1)
    top_k, top_p = torch.tensor([50, 0, 1000]), torch.tensor([0.9, 0.5, 1.0])
    filtered = top_k_top_p(probs, top_k, top_p)
    differ = float((filtered != top_k_top_p_ref(probs, top_k, top_p)).sum())
    return [*checks, ("top_k_top_p (3 x 201088, differing)", differ, 0)]


def interpreter_checks() -> list[Check]:
    """Each kernel against its torch reference at small shapes, fp32, on this CPU under the
    Triton interpreter (TRITON_INTERPRET=1 must be set before anything imports triton)."""
    from oss_serve.kernels.backend import force_backend

    g = torch.Generator().manual_seed(0)
    with force_backend("triton"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy overflow at scale 2^127
        return _small_checks(g) + _moe_checks(g) + _attention_checks(g)
