"""Size limits of one request, the same on both front ends: the body or message size, the
number of messages, tools and choices, the length of the ids a client may send, and the
longest a request may run. Beyond a limit: InvalidRequest naming the field (HTTP 400,
gRPC INVALID_ARGUMENT); a body over the size limit is HTTP 413 or gRPC RESOURCE_EXHAUSTED
(the gRPC server refuses the message itself)."""

from __future__ import annotations

from dataclasses import dataclass

from oss_serve.common.settings import Settings
from oss_serve.router.errors import InvalidRequest

MAX_ID_CHARS = 256  # request_id, model
MAX_SESSION_KEY_CHARS = 512  # session_key, user (OpenAI's `user` has the same bound)


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int = 8 * 1024 * 1024
    max_messages: int = 4096
    max_tools: int = 256
    max_n: int = 16
    max_timeout_s: float = 600.0  # a client's deadline is cut to this

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(
            max_body_bytes=settings.max_request_body_bytes,
            max_messages=settings.max_request_messages,
            max_tools=settings.max_request_tools,
            max_n=settings.max_request_n,
            max_timeout_s=settings.request_timeout_s,
        )

    def check_counts(self, *, n: int = 1, messages: int = 0, tools: int = 0) -> None:
        if n > self.max_n:
            raise InvalidRequest(f"n must be <= {self.max_n}", field="n")
        if messages > self.max_messages:
            raise InvalidRequest(
                f"at most {self.max_messages} messages/items per request", field="messages"
            )
        if tools > self.max_tools:
            raise InvalidRequest(f"at most {self.max_tools} tools per request", field="tools")

    def timeout_s(self, requested_s: float | None) -> float:
        """The request's deadline: the client's, cut to max_timeout_s; that when none."""
        if requested_s is None:
            return self.max_timeout_s
        return max(0.0, min(requested_s, self.max_timeout_s))


def check_length(value: str, field: str, max_chars: int) -> None:
    if len(value) > max_chars:
        raise InvalidRequest(f"{field} is longer than {max_chars} characters", field=field)
