"""The gpt-oss mixture of experts: top-k routing and the clamped-SwiGLU experts.

Expert weights come either dense ([E, out, in], like nn.Linear) or packed MXFP4 (blocks +
scales, see kernels.mxfp4). An expert-parallel rank holds experts
[expert_start, expert_start + E_local) and returns only their share of each token's output;
the caller sums the shares across ranks. On the CPU, small fp32 batches of dense experts run
the C kernel of kernels.cpu_moe; the torch paths below serve the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import cpu_moe
from .backend import use_triton
from .lora import MoELoRA, add_lora
from .mxfp4 import dequantize_mxfp4


def route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick each token's top_k experts by logit; weights = softmax over those k logits.

    Returns (weights [N, k] in the logits' dtype, expert ids [N, k] int64).
    """
    if use_triton(router_logits):
        from . import triton_moe

        return triton_moe.route(router_logits, top_k)
    return route_ref(router_logits, top_k)


def moe_experts(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w1: torch.Tensor,
    w1_scales: torch.Tensor | None,
    b1: torch.Tensor,
    w2: torch.Tensor,
    w2_scales: torch.Tensor | None,
    b2: torch.Tensor,
    *,
    swiglu_alpha: float,
    swiglu_limit: float,
    expert_start: int = 0,
    lora: MoELoRA | None = None,
) -> torch.Tensor:
    """sum_k w_k * expert_{id_k}(x) over the local experts; x [N, hidden] -> [N, hidden].

    w1 [E_local, 2I, H] (rows interleave gate/up) and w2 [E_local, H, I] are dense when their
    scales are None, else MXFP4 blocks [E_local, out, in/32, 16] with scales [E_local, out,
    in/32]. b1 [E_local, 2I], b2 [E_local, H]. `lora`: per-token expert adapters, added to
    each expert's two projections (the grouped path, on every device).
    """
    if lora is not None:
        return moe_experts_grouped(
            x, topk_weights, topk_ids, w1, w1_scales, b1, w2, w2_scales, b2,
            swiglu_alpha=swiglu_alpha, swiglu_limit=swiglu_limit, expert_start=expert_start,
            lora=lora,
        )  # fmt: skip
    implementation: Callable[..., torch.Tensor] = moe_experts_grouped
    if use_triton(x, topk_weights, topk_ids, w1, b1, w2, b2):
        from . import triton_moe

        implementation = triton_moe.moe_experts
    elif cpu_moe.supports(x, w1, w1_scales):
        out = cpu_moe.moe_experts(
            x, topk_weights, topk_ids, w1, b1, w2, b2,
            swiglu_alpha=swiglu_alpha, swiglu_limit=swiglu_limit, expert_start=expert_start,
        )  # fmt: skip
        if out is not None:
            return out
    return implementation(
        x,
        topk_weights,
        topk_ids,
        w1,
        w1_scales,
        b1,
        w2,
        w2_scales,
        b2,
        swiglu_alpha=swiglu_alpha,
        swiglu_limit=swiglu_limit,
        expert_start=expert_start,
    )


def route_ref(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    top_logits, top_ids = torch.topk(router_logits, top_k, dim=-1, sorted=True)
    return torch.softmax(top_logits, dim=-1), top_ids


def swiglu(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gpt-oss's SwiGLU: even columns gate (clamped above), odd columns up (clamped both), +1."""
    gate = gate_up[..., 0::2].clamp(max=limit)
    up = gate_up[..., 1::2].clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def moe_experts_ref(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w1: torch.Tensor,
    w1_scales: torch.Tensor | None,
    b1: torch.Tensor,
    w2: torch.Tensor,
    w2_scales: torch.Tensor | None,
    b2: torch.Tensor,
    *,
    swiglu_alpha: float,
    swiglu_limit: float,
    expert_start: int = 0,
) -> torch.Tensor:
    """The torch reference: loop over the local experts that some token chose.

    MXFP4 experts are dequantized one at a time, only when chosen.
    """
    out = torch.zeros_like(x)
    local_ids = topk_ids - expert_start
    num_local = b1.shape[0]
    chosen = local_ids[(local_ids >= 0) & (local_ids < num_local)]
    for expert in torch.unique(chosen).tolist():
        token_idx, slot = torch.nonzero(local_ids == expert, as_tuple=True)
        up_weight = _expert_weight(w1, w1_scales, expert, x.dtype)
        down_weight = _expert_weight(w2, w2_scales, expert, x.dtype)
        hidden = torch.nn.functional.linear(x[token_idx], up_weight, b1[expert])
        hidden = swiglu(hidden, swiglu_alpha, swiglu_limit)
        y = torch.nn.functional.linear(hidden, down_weight, b2[expert])
        out.index_add_(0, token_idx, y * topk_weights[token_idx, slot, None].to(y.dtype))
    return out


def moe_experts_grouped(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w1: torch.Tensor,
    w1_scales: torch.Tensor | None,
    b1: torch.Tensor,
    w2: torch.Tensor,
    w2_scales: torch.Tensor | None,
    b2: torch.Tensor,
    *,
    swiglu_alpha: float,
    swiglu_limit: float,
    expert_start: int = 0,
    lora: MoELoRA | None = None,
) -> torch.Tensor:
    """The torch (CPU) fast path; same result as `moe_experts_ref`.

    The (token, expert) pairs are sorted by expert once, so each expert's rows are one
    contiguous slice (one gather in, one scatter-add out) instead of a search per expert.
    Sums run in the reference's order: a token's experts by increasing id. With `lora`,
    each pair's adapter delta joins its projection's output before the SwiGLU / the sum.
    """
    top_k = topk_ids.shape[1]
    local_ids = (topk_ids - expert_start).flatten()
    num_local = b1.shape[0]
    tokens = torch.arange(x.shape[0], device=x.device).repeat_interleave(top_k)
    pair_weights = topk_weights.flatten()
    mine = (local_ids >= 0) & (local_ids < num_local)
    if not bool(mine.all()):
        local_ids, tokens, pair_weights = local_ids[mine], tokens[mine], pair_weights[mine]
    order = torch.argsort(local_ids, stable=True)
    local_ids, tokens, pair_weights = local_ids[order], tokens[order], pair_weights[order]
    rows = x[tokens]
    counts = torch.bincount(local_ids, minlength=num_local).tolist()
    pair_slots = None if lora is None else lora.pair_slots(tokens, local_ids)
    hidden = _grouped_linear(rows, counts, w1, w1_scales, b1)
    if lora is not None and pair_slots is not None:
        add_lora(hidden, rows, lora.gate_up, pair_slots)
    hidden = swiglu(hidden, swiglu_alpha, swiglu_limit)
    outputs = _grouped_linear(hidden, counts, w2, w2_scales, b2)
    if lora is not None and pair_slots is not None:
        add_lora(outputs, hidden, lora.down, pair_slots)
    out = torch.zeros_like(x)
    return out.index_add_(0, tokens, outputs * pair_weights[:, None].to(outputs.dtype))


def _grouped_linear(
    rows: torch.Tensor,
    counts: list[int],
    weight: torch.Tensor,
    scales: torch.Tensor | None,
    bias: torch.Tensor,
) -> torch.Tensor:
    """rows sorted by expert (`counts` each) times their expert's weight, plus its bias."""
    out = rows.new_empty(rows.shape[0], bias.shape[1])
    # training: autograd records each expert's product (addmm's out= has no gradient)
    training = torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad)
    start = 0
    for expert, count in enumerate(counts):
        if count:
            expert_rows = rows[start : start + count]
            expert_weight = _expert_weight(weight, scales, expert, rows.dtype)
            if training:
                out[start : start + count] = torch.nn.functional.linear(
                    expert_rows, expert_weight, bias[expert]
                )
            else:  # written in place: bias + rows @ weight.T, no temporary per expert
                torch.addmm(
                    bias[expert].to(rows.dtype), expert_rows, expert_weight.t(),
                    out=out[start : start + count],
                )  # fmt: skip
            start += count
    return out


def _expert_weight(
    weight: torch.Tensor, scales: torch.Tensor | None, expert: int, dtype: torch.dtype
) -> torch.Tensor:
    if scales is None:
        return weight[expert].to(dtype)
    return dequantize_mxfp4(weight[expert], scales[expert], dtype)
