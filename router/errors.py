"""Errors of the request pipeline, each knowing its gRPC status and HTTP status.

The gRPC and HTTP front ends map these the same way, so a request fails alike on both.
"""

from __future__ import annotations

import math

import grpc


class RequestError(Exception):
    """A request that cannot be served; `message` says what was wrong and what to do."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    error_type: str = "server_error"  # OpenAI error body "type"
    code: str | None = None  # OpenAI error body "code"

    def __init__(
        self, message: str, *, field: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = None if retry_after_s is None else max(1.0, float(retry_after_s))

    @property
    def retry_after_header(self) -> str | None:
        """The whole seconds for a Retry-After header (HTTP) or metadata (gRPC), if any."""
        return None if self.retry_after_s is None else str(math.ceil(self.retry_after_s))


class InvalidRequest(RequestError, ValueError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    error_type = "invalid_request_error"


class Unauthenticated(RequestError):
    """No API key, or one that is not known (revoked, mistyped)."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(RequestError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    error_type = "not_found_error"
    code = "model_not_found"


class Overloaded(RequestError):
    """Every queue is over its bound: retry after `retry_after_s` (never a silent drop)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    error_type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class RateLimited(Overloaded):
    """The caller's key is over its requests or tokens per minute (`limit` says which)."""

    def __init__(self, message: str, *, retry_after_s: float, limit: str) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.limit = limit
        self.code = f"rate_limit_{limit}"


class IdempotencyConflict(RequestError):
    """A request id reused for a different request, or whose first attempt still runs
    (then with a retry-after): HTTP 409."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409
    error_type = "invalid_request_error"
    code = "idempotency_conflict"


class ToolServerFailed(RequestError):
    """A tool server the request names (an MCP server) could not list its tools: HTTP 424."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 424
    error_type = "invalid_request_error"
    code = "tool_server_failed"


class Unavailable(RequestError):
    """No healthy replica serves the model, or Redis is unreachable."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    error_type = "service_unavailable"
    code = "unavailable"


class DeadlineExceeded(RequestError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    error_type = "timeout"


class RequestFailed(RequestError):
    """The request failed for good on a replica (it was dead-lettered with the reason)."""

    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500
    error_type = "server_error"
