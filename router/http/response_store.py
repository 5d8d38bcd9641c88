"""Stored Responses (`store: true`), so that `previous_response_id` can continue a
conversation on any router: the response object plus the input items it was made from,
as JSON under `{ns}:response:{id}` with a TTL."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from oss_serve.streams.keys import RedisKeys


class ResponseStore:
    def __init__(self, redis: Redis, keys: RedisKeys, ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self.ttl_s = ttl_s

    async def save(
        self,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        *,
        tool_session: str | None = None,
    ) -> None:
        """`tool_session`: the built-in tools' session a follow-up in the chain continues."""
        fields: dict[str, Any] = {"response": response, "input": input_items}
        if tool_session is not None:
            fields["tool_session"] = tool_session
        record = json.dumps(fields, ensure_ascii=False)
        await self._redis.set(self._keys.response(response["id"]), record, ex=self.ttl_s)

    async def load(self, response_id: str) -> dict[str, Any] | None:
        """{"response": ..., "input": [...], "tool_session"?: ...} or None when unknown or
        expired."""
        raw = await self._redis.get(self._keys.response(response_id))
        return None if raw is None else json.loads(raw)

    async def delete(self, response_id: str) -> bool:
        return bool(await self._redis.delete(self._keys.response(response_id)))

    @staticmethod
    def conversation(record: dict[str, Any]) -> list[dict[str, Any]]:
        """The items a follow-up request continues from: earlier input, then the output."""
        items = list(record.get("input", []))
        for item in record.get("response", {}).get("output", []):
            items.append({k: v for k, v in item.items() if k not in ("id", "status")})
        return items
