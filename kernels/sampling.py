"""Top-k / top-p filtering of next-token probabilities (vLLM's rules, the sampler's order).

Each row keeps its k most probable tokens (ties broken by the lower token id), then the
smallest run of those, most probable first, whose mass before the last kept token is still
below top_p of the top-k mass; every other probability becomes 0. The most probable token
always survives. top_k <= 0 or >= vocab and top_p >= 1 switch a filter off. The Triton
kernel finds both cut-offs by bisecting on the probabilities' bits instead of sorting the
201088-wide rows.
"""

from __future__ import annotations

import torch

from .backend import use_triton


def top_k_top_p(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """probs [B, vocab] (>= 0, any total), top_k [B] int, top_p [B] float -> filtered copy."""
    if use_triton(probs, top_k, top_p):
        from . import triton_sampling

        return triton_sampling.top_k_top_p(probs, top_k, top_p)
    return top_k_top_p_torch(probs, top_k, top_p)


CANDIDATE_COUNTS = (256, 4096)  # tokens searched for the cut-offs before sorting whole rows


def top_k_top_p_torch(
    probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """The torch (CPU) fast path; the reference's result without sorting 201088-wide rows.

    A row's cut-offs are looked for among its most probable tokens (topk, then ordered as
    the reference's stable sort orders them). The answer is exact when the kept run ends
    before the candidates whose value ties the smallest candidate's; other rows try more
    candidates, then take the reference.
    """
    vocab = probs.shape[-1]
    top_k = torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k).to(probs.device)
    top_p = top_p.to(device=probs.device, dtype=torch.float64)
    out = torch.zeros_like(probs)
    filtering = (top_k < vocab) | (top_p < 1.0)
    untouched = torch.nonzero(~filtering).flatten()
    if untouched.numel():
        out.index_copy_(0, untouched, probs.index_select(0, untouched))
    pending = torch.nonzero(filtering).flatten()
    for count in CANDIDATE_COUNTS:
        if pending.numel() == 0:
            return out
        rows = probs if pending.numel() == probs.shape[0] else probs.index_select(0, pending)
        ids, kept, exact = _filter_candidates(
            rows, top_k[pending], top_p[pending], min(count, vocab)
        )
        flat = (pending[exact, None] * vocab + ids[exact]).flatten()
        out.view(-1).index_put_((flat,), kept[exact].flatten())
        pending = pending[~exact]
    if pending.numel():
        rows = probs.index_select(0, pending)
        out.index_copy_(0, pending, top_k_top_p_ref(rows, top_k[pending], top_p[pending]))
    return out


def _filter_candidates(
    probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From each row's `count` most probable tokens: (their ids, their values where kept
    else 0, whether the row's answer is exact)."""
    vocab = probs.shape[-1]
    values, ids = torch.topk(probs, count, dim=-1)
    ids, by_id = ids.sort(dim=-1)  # descending value, ties by the lower id: the stable order
    values, by_value = values.gather(1, by_id).sort(dim=-1, descending=True, stable=True)
    ids = ids.gather(1, by_value)
    ranks = torch.arange(count, device=probs.device)[None, :]
    k = top_k[:, None]
    mass = torch.where(ranks < k, values, torch.zeros_like(values)).double()
    mass_before = torch.cumsum(mass, dim=-1) - mass
    total = mass.sum(-1, keepdim=True)
    whole_rows = torch.nonzero(top_k >= vocab).flatten()
    if whole_rows.numel():  # no top-k: top-p of the whole row's mass
        total[whole_rows] = sum_fp64(probs.index_select(0, whole_rows)).unsqueeze(1)
    keep = (mass_before < top_p[:, None] * total) | (ranks == 0) | (top_p[:, None] >= 1.0)
    keep &= ranks < k
    settled = (values > values[:, -1:]).sum(-1)  # ranks that equal the full sort's
    knows_total = (top_k <= count) | (top_k >= vocab)  # else the top-k mass is unknown
    exact = ((keep.sum(-1) < settled) & knows_total) | (count == vocab)
    return ids, torch.where(keep, values, torch.zeros_like(values)), exact


def sum_fp64(x: torch.Tensor) -> torch.Tensor:
    """x.sum(-1, dtype=float64) a few rows at a time: no fp64 copy of all of x at once."""
    rows_per_block = max(1, (1 << 18) // max(1, x[0].numel()))
    return torch.cat([block.sum(-1, dtype=torch.float64) for block in x.split(rows_per_block)])


def top_k_top_p_ref(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The torch reference: a stable descending sort, masks by rank and by cumulative mass."""
    vocab = probs.shape[-1]
    ordered, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    ranks = torch.arange(vocab, device=probs.device)[None, :]
    k = torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k).to(probs.device)[:, None]
    ordered = torch.where(ranks < k, ordered, torch.zeros_like(ordered))
    mass = ordered.double()
    mass_before = torch.cumsum(mass, dim=-1) - mass
    limit = top_p.to(device=probs.device, dtype=torch.float64)[:, None] * mass.sum(-1, keepdim=True)
    keep = (mass_before < limit) | (ranks == 0) | (top_p[:, None].to(probs.device) >= 1.0)
    ordered = torch.where(keep, ordered, torch.zeros_like(ordered))
    return torch.zeros_like(probs).scatter_(1, order, ordered)
