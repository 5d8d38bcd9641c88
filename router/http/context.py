"""What every route needs: the pipeline (its gate holds keys, limits and usage), the
metrics it serves on /metrics, the server-side tools and their sessions, and the
translation of HTTP's key headers for the gate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request
from redis.asyncio import Redis

from oss_serve.router.gate import Caller, presented_key
from oss_serve.router.metrics import RouterMetrics
from oss_serve.router.pipeline import RequestPipeline
from oss_serve.router.tool_sessions import ToolSessions
from oss_serve.streams.keys import RedisKeys
from oss_serve.tools.server_tools import ServerTools


@dataclass
class ApiContext:
    pipeline: RequestPipeline
    redis: Redis
    keys: RedisKeys
    metrics: RouterMetrics
    response_ttl_s: int = 24 * 3600  # stored Responses (previous_response_id)
    owned_by: str = "oss-serve"
    admin_api_key: str | None = None  # allows the runtime LoRA load/unload endpoints
    created_unix_s: int = field(default_factory=lambda: int(time.time()))
    tools: ServerTools | None = None  # server-side tools (--tools); None: none enabled
    tool_sessions: ToolSessions | None = None
    max_tool_calls: int = 16  # per response when the request names no max_tool_calls

    @property
    def max_body_bytes(self) -> int:
        return self.pipeline.limits.max_body_bytes

    async def authenticate(self, request: Request) -> Caller:
        """The caller's key from `Authorization: Bearer` (or `api-key`); 401 otherwise."""
        return await self.pipeline.authenticate(
            presented_key(request.headers.get("authorization"), request.headers.get("api-key"))
        )
