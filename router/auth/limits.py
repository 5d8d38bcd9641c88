"""Per-key rate limits (requests/min and tokens/min) shared by every router: one Lua script
checks and charges both limits atomically in Redis, on Redis's clock.

Sliding-window counters (as Cloudflare's and Envoy's limiters estimate): the rate over the
last minute is `previous_window * (1 - elapsed_fraction) + current_window`. A request is
charged its prompt tokens on admission and its completion tokens when it finishes; one that
would go over either limit is refused with the wait until it would fit (Retry-After).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis

from oss_serve.router.auth.keys import ApiKey
from oss_serve.streams.keys import RedisKeys

WINDOW_S = 60

# KEYS[1], KEYS[2]: request / token counter prefixes. ARGV: request limit, token limit, token
# cost, window ms (limits 0 = unlimited). Returns {1} or {0, which (1 requests, 2 tokens), wait ms}.
_CHECK_AND_CHARGE = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window_ms = tonumber(ARGV[4])
local window = math.floor(now_ms / window_ms)
local into = now_ms % window_ms
local weight = 1 - into / window_ms
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local costs = {1, tonumber(ARGV[3])}
for i = 1, 2 do
  local limit = limits[i]
  if limit > 0 then
    local cur = tonumber(redis.call('GET', KEYS[i] .. ':' .. window) or '0')
    local prev = tonumber(redis.call('GET', KEYS[i] .. ':' .. (window - 1)) or '0')
    if prev * weight + cur + costs[i] > limit then
      local wait = window_ms - into
      if cur + costs[i] <= limit and prev > 0 then
        local fits_at = window_ms * (1 - (limit - cur - costs[i]) / prev)
        wait = math.max(1, math.ceil(fits_at - into))
      elseif costs[i] > limit then
        wait = -1
      end
      return {0, i, wait}
    end
  end
end
for i = 1, 2 do
  if costs[i] > 0 then
    local key = KEYS[i] .. ':' .. window
    redis.call('INCRBY', key, costs[i])
    redis.call('PEXPIRE', key, window_ms * 2)
  end
end
return {1, 0, 0}
"""

# KEYS[1]: token counter prefix. ARGV: tokens, window ms. Charges without a check.
_CHARGE = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1] .. ':' .. math.floor(now_ms / tonumber(ARGV[2]))
redis.call('INCRBY', key, ARGV[1])
redis.call('PEXPIRE', key, tonumber(ARGV[2]) * 2)
return 1
"""


@dataclass(frozen=True)
class LimitDecision:
    allowed: bool
    limit: str = ""  # "requests" or "tokens" when refused
    retry_after_s: float = 0.0
    never_fits: bool = False  # the request alone is over the limit


class RateLimiter:
    def __init__(self, redis: Redis, keys: RedisKeys, *, window_s: int = WINDOW_S) -> None:
        self._redis = redis
        self._keys = keys
        self._window_ms = window_s * 1000
        self._check = redis.register_script(_CHECK_AND_CHARGE)
        self._charge = redis.register_script(_CHARGE)

    def _prefix(self, key_id: str, unit: str) -> str:
        return self._keys.rate_limit(key_id, unit, 0).rsplit(":", 1)[0]

    async def admit(self, key: ApiKey, prompt_tokens: int) -> LimitDecision:
        """Charge one request and its prompt tokens if both limits allow; else refuse."""
        if key.requests_per_min <= 0 and key.tokens_per_min <= 0:
            return LimitDecision(True)
        result = await self._check(
            keys=[self._prefix(key.key_id, "requests"), self._prefix(key.key_id, "tokens")],
            args=[key.requests_per_min, key.tokens_per_min, prompt_tokens, self._window_ms],
        )
        if int(result[0]) == 1:
            return LimitDecision(True)
        wait_ms = int(result[2])
        limit = "requests" if int(result[1]) == 1 else "tokens"
        if wait_ms < 0:
            return LimitDecision(False, limit, self._window_ms / 1000, never_fits=True)
        return LimitDecision(False, limit, max(1.0, math.ceil(wait_ms / 1000)))

    async def charge_tokens(self, key: ApiKey, tokens: int) -> None:
        """Completion tokens, charged when the request finishes (counted toward later ones)."""
        if key.tokens_per_min <= 0 or tokens <= 0:
            return
        await self._charge(
            keys=[self._prefix(key.key_id, "tokens")], args=[tokens, self._window_ms]
        )
