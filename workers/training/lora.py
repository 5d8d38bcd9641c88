"""LoRA on gpt-oss's attention projections and experts, saved merged, unmerged (PEFT), or both.

Each adapted weight W becomes W + (alpha / rank) * B @ A through a torch parametrization, so
the model's own forward runs unchanged; W stays frozen, only A and B train. Experts have one
(A, B) pair per expert: W [E, out, in] + B [E, out, r] @ A [E, r, in]. `lora_adapter` reads
the trained pairs out as a LoRAAdapter (written in PEFT's format for serving many adapters
on one base model); `merge_lora` folds B @ A into W and removes the parametrizations: the
state dict is the plain model again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from oss_serve.workers.lora.peft_format import LoRAAdapter
from oss_serve.workers.model.model import Attention, Experts, GptOss

LORA_TARGETS = ("attention", "experts")
_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")


class LoRADelta(nn.Module):
    """W -> W + scale * B @ A for W [..., out, in] (batched over leading dims, e.g. experts)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        *batch, out_features, in_features = weight.shape
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        dtype, device = weight.dtype, weight.device
        # A random, B zero: the adapted model starts equal to the base model
        self.lora_a = nn.Parameter(
            torch.empty((*batch, rank, in_features), dtype=dtype, device=device)
        )
        self.lora_b = nn.Parameter(
            torch.zeros((*batch, out_features, rank), dtype=dtype, device=device)
        )
        nn.init.kaiming_uniform_(self.lora_a.view(-1, in_features), a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * torch.matmul(self.lora_b, self.lora_a)


def _adapted_weights(model: GptOss, targets: Iterable[str]) -> list[tuple[nn.Module, str]]:
    wanted = set(targets)
    unknown = wanted - set(LORA_TARGETS)
    if unknown or not wanted:
        raise ValueError(
            f"lora targets {sorted(unknown) or '(none)'}: choose from {', '.join(LORA_TARGETS)}"
        )
    places: list[tuple[nn.Module, str]] = []
    for module in model.modules():
        if isinstance(module, Attention) and "attention" in wanted:
            places += [(getattr(module, name), "weight") for name in _ATTENTION_PROJECTIONS]
        elif isinstance(module, Experts) and "experts" in wanted:
            if module.format != "dense":
                raise ValueError("LoRA on experts needs dense expert weights (load experts dense)")
            places += [(module, name) for name in _EXPERT_WEIGHTS]
    return places


def apply_lora(
    model: GptOss, *, rank: int, alpha: float, targets: Iterable[str] = LORA_TARGETS
) -> list[nn.Parameter]:
    """Freeze the model, adapt the target weights; returns the trainable LoRA parameters."""
    if rank <= 0:
        raise ValueError(f"lora rank must be positive, got {rank}")
    for param in model.parameters():
        param.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    for module, name in _adapted_weights(model, targets):
        delta = LoRADelta(getattr(module, name), rank, alpha)
        parametrize.register_parametrization(module, name, delta)
        trainable += [delta.lora_a, delta.lora_b]
    return trainable


def lora_adapter(model: GptOss) -> LoRAAdapter:
    """The trained adapters of `model` (before merging) in the serving layout, detached."""
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rank, alpha = 0, 0.0
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        parametrizations = module.parametrizations
        assert isinstance(parametrizations, nn.ModuleDict)
        for param_name, chain in parametrizations.items():
            assert isinstance(chain, nn.ModuleList)
            delta = chain[0]
            assert isinstance(delta, LoRADelta)
            name = module_name if param_name == "weight" else f"{module_name}.{param_name}"
            weights[name] = (delta.lora_a.detach().clone(), delta.lora_b.detach().clone())
            rank, alpha = delta.rank, delta.alpha
    if not weights:
        raise ValueError("the model has no LoRA adapters (apply_lora first)")
    return LoRAAdapter(rank=rank, alpha=alpha, weights=weights)


def merge_lora(model: GptOss) -> None:
    """Fold every adapter into its weight and drop the parametrizations (in place)."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        parametrizations = module.parametrizations
        assert isinstance(parametrizations, nn.ModuleDict)
        for name in list(parametrizations.keys()):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for param in model.parameters():
        param.requires_grad_(True)
