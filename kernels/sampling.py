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
    return top_k_top_p_ref(probs, top_k, top_p)


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
