"""The replica registry: one hash per replica with its load report, kept alive by heartbeats.

Field names are the contract in notes/CONTRACTS.md (strings in a Redis hash); the key has a
TTL of a few heartbeats, so a replica that stops beating disappears on its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from oss_serve.streams.keys import RedisKeys


@dataclass(frozen=True)
class ReplicaLoad:
    """A replica's registration and latest load report."""

    replica_id: str
    pool: str = "default"
    model: str = ""
    address: str = ""
    running: int = 0
    waiting: int = 0  # in the engine, not yet running
    queued: int = 0  # in the replica's Redis streams, not yet pulled
    max_running: int = 0
    kv_usage: float = 0.0  # 0..1
    kv_blocks_free: int = 0
    kv_blocks_total: int = 0
    block_size: int = 16
    max_model_len: int = 0
    finished_per_s: float = 0.0  # recent completion rate, for queue-wait estimates
    prefix_hits: int = 0  # prompt tokens served from the prefix cache (cumulative)
    prefix_queries: int = 0  # prompt tokens looked up (cumulative)
    draining: bool = False
    started_ts: float = 0.0  # unix s of the replica process start: a change means a fresh cache
    heartbeat_ts: float = 0.0
    max_loras: int = 0  # LoRA adapter slots; 0 = the replica serves no adapters
    lora_adapters: str = ""  # adapters served, comma-separated names
    lora_held: str = ""  # those in device slots now (a request for one starts without a load)
    lora_errors: str = ""  # JSON {name: {"order": id, "error": why}}: failed runtime loads

    @property
    def requests(self) -> int:
        """Requests the replica holds: running, waiting in the engine, queued in Redis."""
        return self.running + self.waiting + self.queued

    @property
    def adapters(self) -> list[str]:
        return [name for name in self.lora_adapters.split(",") if name]

    @property
    def held_adapters(self) -> list[str]:
        return [name for name in self.lora_held.split(",") if name]

    def holds_adapter(self, name: str) -> bool:
        return name in self.held_adapters

    def adapter_error(self, name: str, order_id: str) -> str | None:
        """Why this replica failed the load order `order_id` of adapter `name`, if it did."""
        try:
            errors = json.loads(self.lora_errors) if self.lora_errors else {}
        except ValueError:
            return None
        entry = errors.get(name) if isinstance(errors, dict) else None
        if isinstance(entry, dict) and entry.get("order") == order_id:
            return str(entry.get("error", "unknown error"))
        return None

    @property
    def kv_blocks_used(self) -> int:
        return max(0, self.kv_blocks_total - self.kv_blocks_free)

    def to_fields(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            fields[field.name] = str(int(value)) if isinstance(value, bool) else str(value)
        return fields

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> ReplicaLoad:
        """Parse a registry hash; missing or malformed fields take their defaults."""
        text = {_text(k): _text(v) for k, v in raw.items()}
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in text:
                continue
            try:
                values[field.name] = _convert(field.type, text[field.name])
            except ValueError:
                continue
        if "replica_id" not in values:
            raise ValueError("registry hash has no replica_id field")
        return cls(**values)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _convert(type_name: Any, value: str) -> Any:
    if type_name in ("int", int):
        return int(float(value))
    if type_name in ("float", float):
        return float(value)
    if type_name in ("bool", bool):
        return value.strip().lower() in ("1", "true", "yes")
    return value


async def read_registry(redis: Redis, keys: RedisKeys) -> dict[str, ReplicaLoad]:
    """Every replica whose heartbeat key is alive, by id (one round trip per call batch)."""
    raw_members: Any = await redis.smembers(keys.replicas)
    members = sorted(_text(m) for m in raw_members)
    if not members:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for replica_id in members:
            pipe.hgetall(keys.replica(replica_id))
        hashes = await pipe.execute()
    alive: dict[str, ReplicaLoad] = {}
    for raw in hashes:
        if raw:
            try:
                load = ReplicaLoad.from_fields(raw)
            except ValueError:
                continue
            alive[load.replica_id] = load
    return alive
