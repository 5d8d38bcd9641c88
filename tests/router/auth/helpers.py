"""Create API keys in a test Redis through the real key store."""

from __future__ import annotations

import asyncio

from oss_serve.router.auth.keys import ApiKeyStore
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.redis_client import connect


def add_key(redis_url: str, namespace: str, **limits: int) -> str:
    async def add() -> str:
        redis = connect(redis_url)
        try:
            key, _ = await ApiKeyStore(redis, RedisKeys(namespace)).add("test", **limits)
            return key
        finally:
            await redis.aclose()

    return asyncio.run(add())
