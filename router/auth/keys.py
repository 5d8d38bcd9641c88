"""API keys: only their SHA-256 digests are stored (Redis hash `{ns}:apikeys`, digest ->
JSON metadata), so a leaked Redis dump reveals no key. Keys are 256-bit random tokens, for
which one unsalted SHA-256 is enough (as GitHub's and Stripe's tokens are stored).

A router also accepts one key from its settings (`--api-key`, for local use), checked in
constant time and never written to Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis

from oss_serve.streams.keys import RedisKeys

KEY_PREFIX = "sk-oss-"
LOCAL_KEY_ID = "local"


def digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """What is known about a key (never the key itself)."""

    key_id: str  # first 16 hex digits of the digest: names the key in limits, usage and logs
    name: str
    created_unix_s: float = 0.0
    requests_per_min: int = 0  # 0 = unlimited
    tokens_per_min: int = 0  # 0 = unlimited

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKey:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            key_id=str(data["key_id"]),
            name=str(data.get("name", "")),
            created_unix_s=float(data.get("created_unix_s", 0.0)),
            requests_per_min=int(data.get("requests_per_min", 0)),
            tokens_per_min=int(data.get("tokens_per_min", 0)),
        )


class ApiKeyStore:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._hash = keys.api_keys

    async def add(
        self, name: str, *, requests_per_min: int = 0, tokens_per_min: int = 0
    ) -> tuple[str, ApiKey]:
        """A new random key (shown once) and its stored metadata."""
        if requests_per_min < 0 or tokens_per_min < 0:
            raise ValueError("rate limits must be >= 0 (0 = unlimited)")
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_digest = digest(api_key)
        record = ApiKey(
            key_id=key_digest[:16],
            name=name,
            created_unix_s=time.time(),
            requests_per_min=requests_per_min,
            tokens_per_min=tokens_per_min,
        )
        await self._redis.hset(self._hash, key_digest, record.to_json())
        return api_key, record

    async def lookup(self, api_key: str) -> ApiKey | None:
        raw = await self._redis.hget(self._hash, digest(api_key))
        return None if raw is None else ApiKey.from_json(raw)

    async def all(self) -> list[ApiKey]:
        raw = await self._redis.hgetall(self._hash)
        return sorted((ApiKey.from_json(v) for v in raw.values()), key=lambda k: k.created_unix_s)

    async def revoke(self, key_id_or_name: str) -> list[ApiKey]:
        """Delete every key whose id (or name) matches; returns what was revoked."""
        raw = await self._redis.hgetall(self._hash)
        doomed = {
            field: ApiKey.from_json(value)
            for field, value in raw.items()
            if key_id_or_name in (ApiKey.from_json(value).key_id, ApiKey.from_json(value).name)
        }
        if doomed:
            await self._redis.hdel(self._hash, *doomed)
        return list(doomed.values())


class Authenticator:
    """Bearer key -> ApiKey, or None when the key is unknown. `required` is False only when
    no key is configured at all (then every request is served as the anonymous key)."""

    def __init__(
        self,
        store: ApiKeyStore,
        *,
        local_key: str | None = None,
        required: bool = False,
        local_requests_per_min: int = 0,
        local_tokens_per_min: int = 0,
    ) -> None:
        self._store = store
        self._local_digest = digest(local_key) if local_key else None
        self.required = required or local_key is not None
        self._local = ApiKey(
            key_id=LOCAL_KEY_ID,
            name="--api-key",
            requests_per_min=local_requests_per_min,
            tokens_per_min=local_tokens_per_min,
        )
        self.anonymous = ApiKey(key_id="anonymous", name="anonymous")

    async def authenticate(self, presented: str | None) -> ApiKey | None:
        if not self.required:
            return self.anonymous
        if not presented:
            return None
        if self._local_digest is not None and hmac.compare_digest(
            digest(presented), self._local_digest
        ):
            return self._local
        return await self._store.lookup(presented)
