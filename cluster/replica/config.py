"""What a replica host is told about itself: its identity, its model and its timings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaConfig:
    replica_id: str
    model: str
    pool: str = "default"
    address: str = ""
    block_size: int = 16
    max_model_len: int = 0
    heartbeat_interval_s: float = 0.5
    max_delivery_attempts: int = 3
    router_link_grace_s: float = 10.0
    pull_block_ms: int = 100
    max_loras: int = 0  # LoRA adapter slots (0: the engine serves no adapters)
