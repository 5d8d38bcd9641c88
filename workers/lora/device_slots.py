"""The device tier: `max_loras` slots on the model's device, and the hooks that apply them.

Every adapted weight of the model gets one stack of slots (A [S, R, in], B [S, out, R],
a scale per slot; R = max_lora_rank, smaller ranks zero-padded), and its module gets an
adapter hook (model.Linear.adapter / Experts.adapter) that reads this step's
`token_slots` and adds the deltas with kernels.lora. A slot that an adapter does not
fill for some weight has scale 0 there. The expert stacks ([S, E_local, ...], large) are
allocated on the first adapter that adapts experts.
"""

from __future__ import annotations

import torch

from oss_serve.kernels.lora import LoRAWeights, MoELoRA, add_lora
from oss_serve.workers.lora.peft_format import LoRAAdapter
from oss_serve.workers.model.model import Attention, Experts, GptOss, Linear

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


class _Stack:
    """One weight's slots; `weights` is what the kernel reads (experts flattened to S*E)."""

    def __init__(
        self,
        slots: int,
        experts: int,
        rank: int,
        out_features: int,
        in_features: int,
        like: torch.Tensor,
    ) -> None:
        lead = (slots, experts) if experts else (slots,)
        self.lora_a = torch.zeros(*lead, rank, in_features, dtype=like.dtype, device=like.device)
        self.lora_b = torch.zeros(*lead, out_features, rank, dtype=like.dtype, device=like.device)
        self.scales = torch.zeros(lead, dtype=torch.float32, device=like.device)
        flat = slots * max(experts, 1)
        self.weights = LoRAWeights(
            self.lora_a.view(flat, rank, in_features),
            self.lora_b.view(flat, out_features, rank),
            self.scales.view(flat),
        )

    def fill(self, slot: int, pair: tuple[torch.Tensor, torch.Tensor] | None, scale: float) -> None:
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        self.scales[slot] = 0.0
        if pair is None:
            return
        lora_a, lora_b = pair
        rank = lora_a.shape[-2]
        self.lora_a[slot, ..., :rank, :].copy_(lora_a)
        self.lora_b[slot, ..., :rank].copy_(lora_b)
        self.scales[slot] = scale


class AdapterSlots:
    """The model's adapter slots; `set_batch` before each forward says who uses which."""

    def __init__(self, model: GptOss, *, max_loras: int, max_lora_rank: int) -> None:
        if max_loras < 1 or max_lora_rank < 1:
            raise ValueError("max_loras and max_lora_rank must be >= 1")
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.token_slots: torch.Tensor | None = None  # [N] this step; None: no adapter in it
        self._experts_in_batch = False
        self._slot_adapts_experts = [False] * max_loras
        self._linears: dict[str, _Stack] = {}
        self._experts: dict[str, _Stack] = {}
        self._expert_modules: dict[int, Experts] = {}
        for name, module in model.named_modules():
            if isinstance(module, Attention):
                for proj in _PROJECTIONS:
                    linear = getattr(module, proj)
                    assert isinstance(linear, Linear)
                    out_features, in_features = linear.weight.shape
                    stack = _Stack(
                        max_loras, 0, max_lora_rank, out_features, in_features, linear.weight
                    )
                    self._linears[f"{name}.{proj}"] = stack
                    linear.adapter = _LinearHook(self, stack.weights)
            elif isinstance(module, Experts):
                self._expert_modules[int(name.split(".")[1])] = module

    # --- loading ----------------------------------------------------------------------------
    def load(self, slot: int, adapter: LoRAAdapter) -> None:
        """Put `adapter` (this rank's shard) in `slot`, replacing whatever was there."""
        if not 0 <= slot < self.max_loras:
            raise ValueError(f"slot {slot} is outside 0..{self.max_loras - 1}")
        if adapter.rank > self.max_lora_rank:
            raise ValueError(f"adapter rank {adapter.rank} > max_lora_rank {self.max_lora_rank}")
        if adapter.targets_experts and not self._experts:
            self._allocate_experts()
        for name, stack in {**self._linears, **self._experts}.items():
            stack.fill(slot, adapter.weights.get(name), adapter.scale)
        self._slot_adapts_experts[slot] = adapter.targets_experts

    def clear(self, slot: int) -> None:
        for stack in (*self._linears.values(), *self._experts.values()):
            stack.fill(slot, None, 0.0)
        self._slot_adapts_experts[slot] = False

    def _allocate_experts(self) -> None:
        for layer, module in self._expert_modules.items():
            for proj in ("gate_up_proj", "down_proj"):
                bias = getattr(module, f"{proj}_bias")
                experts, out_features = bias.shape
                in_features = _expert_in_features(module, proj)
                self._experts[f"layers.{layer}.mlp.experts.{proj}"] = _Stack(
                    self.max_loras, experts, self.max_lora_rank, out_features, in_features, bias
                )
            module.adapter = _ExpertsHook(self, layer)

    # --- the step ---------------------------------------------------------------------------
    def set_batch(self, token_slots: torch.Tensor | None, slots_used: set[int]) -> None:
        """This step's slot per token (-1: base); None when no token uses an adapter."""
        self.token_slots = token_slots if slots_used else None
        self._experts_in_batch = any(self._slot_adapts_experts[s] for s in slots_used)

    def experts_lora(self, layer: int) -> MoELoRA | None:
        if self.token_slots is None or not self._experts_in_batch:
            return None
        gate_up = self._experts[f"layers.{layer}.mlp.experts.gate_up_proj"]
        return MoELoRA(
            gate_up=gate_up.weights,
            down=self._experts[f"layers.{layer}.mlp.experts.down_proj"].weights,
            token_slots=self.token_slots,
            num_local_experts=int(gate_up.lora_a.shape[1]),
        )


class _LinearHook:
    def __init__(self, slots: AdapterSlots, weights: LoRAWeights) -> None:
        self.slots = slots
        self.weights = weights

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        token_slots = self.slots.token_slots
        return y if token_slots is None else add_lora(y, x, self.weights, token_slots)


class _ExpertsHook:
    def __init__(self, slots: AdapterSlots, layer: int) -> None:
        self.slots = slots
        self.layer = layer

    def __call__(self) -> MoELoRA | None:
        return self.slots.experts_lora(self.layer)


def _expert_in_features(module: Experts, proj: str) -> int:
    """Input width of an expert projection, dense ([E, out, in]) or MXFP4 ([E, out, in/32, 16])."""
    weight, scales = module.weights(proj)
    return int(weight.shape[-1]) if scales is None else int(scales.shape[-1]) * 32
