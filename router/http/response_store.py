"""Stored Responses (`store: true`), so that `previous_response_id` can continue a
conversation on any router: the response object plus the input items it was made from,
as JSON under `{ns}:response:{id}` with a TTL.

A background response's record is written only by the router that runs it (through
`BackgroundRuns`, which checks its lease): a plain `save` leaves such a record alone."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from oss_serve.streams.keys import RedisKeys

# KEYS: record, run. ARGV: record, ttl s. A record with a background run is not replaced.
_SAVE_UNLESS_BACKGROUND = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


class ResponseStore:
    def __init__(self, redis: Redis, keys: RedisKeys, ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self.ttl_s = ttl_s
        self._save = redis.register_script(_SAVE_UNLESS_BACKGROUND)

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
        response_id = response["id"]
        await self._save(
            keys=[self._keys.response(response_id), self._keys.response_run(response_id)],
            args=[record, self.ttl_s],
        )

    async def load(self, response_id: str) -> dict[str, Any] | None:
        """{"response": ..., "input": [...], "tool_session"?: ...} or None when unknown or
        expired."""
        raw = await self._redis.get(self._keys.response(response_id))
        return None if raw is None else json.loads(raw)

    async def delete(self, response_id: str) -> bool:
        """Forget a response: its record, and a background one's run and events."""
        keys = self._keys
        deleted = await self._redis.delete(
            keys.response(response_id),
            keys.response_run(response_id),
            keys.response_events(response_id),
        )
        return bool(deleted)

    @staticmethod
    def conversation(record: dict[str, Any]) -> list[dict[str, Any]]:
        """The items a follow-up request continues from: earlier input, then the output."""
        items = list(record.get("input", []))
        for item in record.get("response", {}).get("output", []):
            items.append({k: v for k, v in item.items() if k not in ("id", "status")})
        return items
