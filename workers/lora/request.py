"""What names an adapter for the engine (vLLM's `LoRARequest`): torch-free plain data."""

from __future__ import annotations

from dataclasses import dataclass

from oss_serve.common.kv_hash import adapter_extra_key


@dataclass(frozen=True)
class LoRARequest:
    """An adapter by name, with a unique positive id and the PEFT folder it loads from."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""

    def __post_init__(self) -> None:
        if not self.lora_name:
            raise ValueError("LoRARequest needs a lora_name")
        if self.lora_int_id < 1:
            raise ValueError(f"lora_int_id must be >= 1, got {self.lora_int_id}")

    @property
    def kv_key(self) -> str | None:
        """The KV block hash extra key of this adapter, the same the router uses."""
        return adapter_extra_key(self.lora_name)
