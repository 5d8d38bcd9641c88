"""The host tier: adapters read from disk, kept in host memory, least recently used first out.

A rank loads an adapter into a device slot from here; one not held is read from its
folder (the disk tier), cut to this rank's shard and kept, up to `max_cpu_loras`.
"""

from __future__ import annotations

from collections import OrderedDict

from oss_serve.workers.lora.peft_format import LoRAAdapter, read_adapter
from oss_serve.workers.lora.request import LoRARequest
from oss_serve.workers.lora.sharding import shard_adapter
from oss_serve.workers.model.config import ModelConfig
from oss_serve.workers.model.parallel import ParallelContext


class HostAdapterCache:
    def __init__(
        self,
        config: ModelConfig,
        parallel: ParallelContext,
        *,
        max_cpu_loras: int,
        max_lora_rank: int,
    ) -> None:
        if max_cpu_loras < 1:
            raise ValueError(f"max_cpu_loras must be >= 1, got {max_cpu_loras}")
        self.config = config
        self.parallel = parallel
        self.max_cpu_loras = max_cpu_loras
        self.max_lora_rank = max_lora_rank
        self._adapters: OrderedDict[int, LoRAAdapter] = OrderedDict()
        self.disk_reads = 0

    def get(self, request: LoRARequest) -> LoRAAdapter:
        """This rank's shard of the adapter, from memory or else from disk."""
        adapter = self._adapters.get(request.lora_int_id)
        if adapter is not None:
            self._adapters.move_to_end(request.lora_int_id)
            return adapter
        full = read_adapter(request.lora_path, self.config, max_rank=self.max_lora_rank)
        self.disk_reads += 1
        adapter = shard_adapter(full, self.config, self.parallel)
        self._adapters[request.lora_int_id] = adapter
        while len(self._adapters) > self.max_cpu_loras:
            self._adapters.popitem(last=False)
        return adapter

    def held(self) -> list[int]:
        """Adapter ids in memory, least recently used first."""
        return list(self._adapters)
