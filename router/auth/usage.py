"""Per-key usage accounting in Redis (`{ns}:usage:{key_id}` hash), shared by all routers."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from oss_serve.streams.keys import RedisKeys


@dataclass(frozen=True)
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0


class UsageRecorder:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def record(self, key_id: str, usage: Usage) -> None:
        """Add one finished request's usage (one round trip, atomic per key)."""
        key = self._keys.usage(key_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "requests", usage.requests)
            pipe.hincrby(key, "prompt_tokens", usage.prompt_tokens)
            pipe.hincrby(key, "completion_tokens", usage.completion_tokens)
            pipe.hincrby(key, "cached_prompt_tokens", usage.cached_prompt_tokens)
            pipe.hincrby(key, "reasoning_tokens", usage.reasoning_tokens)
            await pipe.execute()

    async def read(self, key_id: str) -> Usage:
        raw = await self._redis.hgetall(self._keys.usage(key_id))
        values = {_text(k): int(v) for k, v in raw.items()}
        return Usage(**{name: values.get(name, 0) for name in Usage.__dataclass_fields__})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
