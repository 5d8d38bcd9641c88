"""A replica following the cluster's LoRA load/unload orders (streams/lora_adapters.py).

Runs beside the heartbeat, never inside it: reading and checking an adapter can take a
while, and the heartbeat must not miss its TTL. What a load failed on (a corrupt file, a
rank above --max-lora-rank) is kept in `errors` and reported in the registry, where the
router that took the order reads it back; the replica keeps serving either way.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from redis.asyncio import Redis

from oss_serve.common.logging import get_logger
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.lora_adapters import AdapterOrder, read_orders
from oss_serve.streams.redis_client import TRANSIENT_ERRORS

log = get_logger(__name__)


class AdapterEngine(Protocol):
    async def add_lora(self, name: str, path: str) -> Any: ...

    async def remove_lora(self, name: str) -> bool: ...

    def lora_request(self, name: str) -> Any: ...  # LoRARequest | None


class AdapterSync:
    def __init__(
        self, engine: AdapterEngine, redis: Redis, keys: RedisKeys, *, interval_s: float = 0.5
    ) -> None:
        self.engine = engine
        self.redis = redis
        self.keys = keys
        self.interval_s = interval_s
        self.errors: dict[str, dict[str, str]] = {}  # name -> {"order": id, "error": why}
        self._applied: dict[str, AdapterOrder] = {}
        self._stopped = False

    async def run(self) -> None:
        while not self._stopped:
            try:
                await self.sync()
            except TRANSIENT_ERRORS as err:
                log.warning("lora orders unreadable", error=str(err))
            await asyncio.sleep(self.interval_s)

    def stop(self) -> None:
        self._stopped = True

    async def sync(self) -> None:
        """Apply every order not applied yet (each once, until it changes)."""
        for name, order in (await read_orders(self.redis, self.keys)).items():
            if self._applied.get(name) != order:
                await self._apply(order)
                self._applied[name] = order

    async def _apply(self, order: AdapterOrder) -> None:
        served = self.engine.lora_request(order.name)
        if order.unload:
            self.errors.pop(order.name, None)
            if served is not None:
                await self.engine.remove_lora(order.name)
                log.info("lora adapter unloaded", name=order.name)
            return
        if served is not None and served.lora_path != order.path:
            await self.engine.remove_lora(order.name)  # the name now points at another folder
        try:
            await self.engine.add_lora(order.name, order.path)
        except (ValueError, OSError) as err:  # AdapterError: the replica keeps serving
            self.errors[order.name] = {"order": order.order_id, "error": str(err)}
            log.warning("lora adapter load failed", name=order.name, error=str(err))
            return
        self.errors.pop(order.name, None)
        log.info("lora adapter loaded", name=order.name, path=order.path)
