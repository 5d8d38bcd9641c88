"""Runtime LoRA loads and unloads, as orders in one Redis hash that every replica follows.

A router's `POST /v1/load_lora_adapter` writes `name -> {"path": ...}`, unload writes
`name -> {"unload": true}`, each with a fresh order id; each replica with LoRA enabled reads
the hash every half second and makes its adapters match (loading, or unloading even a
`--lora-modules` adapter), then reports what it serves, and why a load failed (with the
order's id, so that a router never reads an older failure as this order's), in its
registry hash. Replicas that start
later read the same orders, so the cluster converges on one set of adapters.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from oss_serve.streams.keys import RedisKeys


@dataclass(frozen=True)
class AdapterOrder:
    name: str
    path: str = ""  # "" with unload
    unload: bool = False
    order_id: str = ""


async def order_load(redis: Redis, keys: RedisKeys, name: str, path: str) -> str:
    """Order every LoRA replica to serve the adapter at `path` as `name`; returns the id."""
    order_id = uuid.uuid4().hex
    await redis.hset(keys.lora_adapters, name, json.dumps({"path": path, "order": order_id}))
    return order_id


async def order_unload(redis: Redis, keys: RedisKeys, name: str) -> str:
    order_id = uuid.uuid4().hex
    await redis.hset(keys.lora_adapters, name, json.dumps({"unload": True, "order": order_id}))
    return order_id


async def read_orders(redis: Redis, keys: RedisKeys) -> dict[str, AdapterOrder]:
    raw: Any = await redis.hgetall(keys.lora_adapters)
    orders: dict[str, AdapterOrder] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        try:
            body = json.loads(value)
        except ValueError:
            continue
        if isinstance(body, dict):
            orders[name] = AdapterOrder(
                name,
                str(body.get("path", "")),
                bool(body.get("unload")),
                str(body.get("order", "")),
            )
    return orders
