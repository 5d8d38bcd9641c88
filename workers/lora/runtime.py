"""One rank's adapter machinery for the model runner: device slots fed from the host tier.

Each step the scheduler says which adapters to put in which slots (`lora_loads`) and the
runner says which slot each token uses; everything else (disk reads, sharding, LRU) is
behind this object.
"""

from __future__ import annotations

import torch

from oss_serve.workers.lora.device_slots import AdapterSlots
from oss_serve.workers.lora.host_cache import HostAdapterCache
from oss_serve.workers.lora.request import LoRARequest
from oss_serve.workers.model.model import GptOss


class LoRARuntime:
    def __init__(
        self, model: GptOss, *, max_loras: int, max_lora_rank: int, max_cpu_loras: int
    ) -> None:
        self.slots = AdapterSlots(model, max_loras=max_loras, max_lora_rank=max_lora_rank)
        self.host = HostAdapterCache(
            model.config,
            model.parallel,
            max_cpu_loras=max_cpu_loras,
            max_lora_rank=max_lora_rank,
        )

    def begin_step(
        self,
        loads: dict[int, LoRARequest],
        token_slots: torch.Tensor | None,
        slots_used: set[int],
    ) -> None:
        """Load this step's new adapters into their slots, then set who uses which."""
        for slot, lora in loads.items():
            self.slots.load(slot, self.host.get(lora))
        self.slots.set_batch(token_slots, slots_used)
