"""What names an adapter for the engine (vLLM's `LoRARequest`): torch-free plain data."""

from __future__ import annotations

from dataclasses import dataclass


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
    def kv_key(self) -> str:
        """What keys this adapter's KV blocks (common.kv_hash extra key), as the router's."""
        return lora_kv_key(self.lora_name)


def lora_kv_key(lora_name: str) -> str:
    """Two adapters never share KV blocks: their prefix hashes differ by this key."""
    return f"lora:{lora_name}"
