"""One streamed chat completion against any OpenAI-compatible endpoint, timed chunk by chunk.

httpx rather than the `openai` client: a raw SSE reader sees every chunk the moment it
arrives, keeps the per-request cost small when thousands of streams share one event
loop, and lets us classify what a broken server sends (HTTP status, non-JSON lines,
error events, streams cut short) instead of collapsing it into one exception type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import certifi
import httpx

from oss_serve.benchmarks.metrics import RequestRecord
from oss_serve.benchmarks.workloads import ChatTurn, count_tokens
from oss_serve.common.logging import redact

_DETAIL_CHARS = 300


@dataclass(frozen=True)
class Endpoint:
    """Where and how requests go: the chat URL, model name, key and per-request options."""

    chat_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 600.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    stream_usage: bool = True  # ask for the usage chunk (stream_options.include_usage)
    max_tokens_field: str = "max_tokens"

    @classmethod
    def from_base_url(cls, base_url: str, model: str, **options: Any) -> Endpoint:
        """`http://host:8000` or `http://host:8000/v1` -> `.../v1/chat/completions`."""
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"base-url: {base_url!r} must start with http:// or https://")
        if base.endswith("/chat/completions"):
            url = base
        elif base.endswith("/v1"):
            url = f"{base}/chat/completions"
        else:
            url = f"{base}/v1/chat/completions"
        return cls(chat_url=url, model=model, **options)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def body(self, messages: list[dict[str, Any]], turn: ChatTurn) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            self.max_tokens_field: turn.max_tokens,
        }
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(turn.extra)
        body.update(self.extra_body)
        return body


class ClientPool:
    """Several small httpx pools instead of one large one.

    httpcore scans every connection of a pool for each request it assigns, so one pool of
    thousands of streams costs O(n) per request (O(n^2) a run). Leasing from the pool with
    the fewest streams in flight keeps each scan short; connections are not capped, so a
    request never waits for a slot (that would show up as fake TTFT).
    """

    def __init__(self, max_streams: int, timeout_s: float, streams_per_pool: int = 64) -> None:
        count = max(1, math.ceil(max_streams / streams_per_pool))
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=streams_per_pool)
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))
        tls = ssl.create_default_context(cafile=certifi.where())  # loaded once, shared
        self._clients = [
            httpx.AsyncClient(limits=limits, timeout=timeout, verify=tls) for _ in range(count)
        ]
        self._in_flight = [0] * count

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        index = min(range(len(self._clients)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            yield self._clients[index]
        finally:
            self._in_flight[index] -= 1

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients))


class _StreamFailure(Exception):
    def __init__(self, kind: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.retry_after_s = retry_after_s


@dataclass
class _StreamState:
    """What the reader has seen so far."""

    sent_s: float
    last_token_s: float | None = None
    text_parts: list[str] = field(default_factory=list)
    content_parts: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    done: bool = False
    end_s: float | None = None


async def send_chat(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    messages: list[dict[str, Any]],
    turn: ChatTurn,
    record: RequestRecord,
) -> None:
    """Send one request and fill `record` in place; never raises for server misbehaviour."""
    state = _StreamState(sent_s=time.perf_counter())
    try:
        async with asyncio.timeout(endpoint.timeout_s):
            await _stream(client, endpoint, endpoint.body(messages, turn), state, record)
        _finish(state, messages, record)
    except _StreamFailure as failure:
        _fail(record, failure.kind, failure.detail)
        record.retry_after_s = failure.retry_after_s
    except TimeoutError:
        _fail(record, "timeout", f"no complete answer within {endpoint.timeout_s:g} s")
    except httpx.TimeoutException as err:
        _fail(record, "timeout", type(err).__name__)
    except httpx.ConnectError as err:
        _fail(record, "connection_error", str(err) or type(err).__name__)
    except (httpx.RemoteProtocolError, httpx.ReadError) as err:
        _fail(record, "connection_dropped", str(err) or type(err).__name__)
    except httpx.HTTPError as err:
        _fail(record, "transport_error", f"{type(err).__name__}: {err}")


async def _stream(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    body: dict[str, Any],
    state: _StreamState,
    record: RequestRecord,
) -> None:
    async with client.stream(
        "POST", endpoint.chat_url, json=body, headers=endpoint.headers()
    ) as response:
        if response.status_code != 200:
            raw = await response.aread()
            raise _StreamFailure(
                f"http_{response.status_code}",
                _error_message(raw),
                _seconds(response.headers.get("retry-after")),
            )
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, `event:` lines
            payload = line[5:].strip()
            if payload == "[DONE]":
                state.done = True
                state.end_s = time.perf_counter()
                return
            _read_event(payload, state, record)
    state.end_s = time.perf_counter()


def _read_event(payload: str, state: _StreamState, record: RequestRecord) -> None:
    try:
        event = json.loads(payload)
    except json.JSONDecodeError:
        raise _StreamFailure("invalid_response", f"not JSON: {payload[:80]!r}") from None
    if not isinstance(event, dict):
        raise _StreamFailure("invalid_response", f"not an object: {payload[:80]!r}")
    if event.get("error") is not None:
        raise _StreamFailure("stream_error", _error_message(json.dumps(event).encode()))
    if isinstance(event.get("usage"), dict):
        state.usage = event["usage"]
    pieces: list[str] = []
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            pieces.append(content)
            state.content_parts.append(content)
        for key in ("reasoning_content", "reasoning"):
            if delta.get(key):
                pieces.append(delta[key])
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            pieces.extend(p for p in (function.get("name"), function.get("arguments")) if p)
    if not pieces:
        return
    now = time.perf_counter()
    if state.last_token_s is None:
        record.ttft_s = now - state.sent_s
    else:
        record.itl_s.append(now - state.last_token_s)
    state.last_token_s = now
    record.chunks += 1
    state.text_parts.extend(pieces)


def _finish(state: _StreamState, messages: list[dict[str, Any]], record: RequestRecord) -> None:
    end_s = state.end_s if state.end_s is not None else time.perf_counter()
    record.e2e_s = end_s - state.sent_s
    if not state.done:
        raise _StreamFailure("incomplete_stream", "the stream ended without data: [DONE]")
    if record.chunks == 0:
        raise _StreamFailure("empty_response", "the stream carried no generated text")
    record.output_text = "".join(state.content_parts)
    usage = state.usage or {}
    if isinstance(usage.get("completion_tokens"), int) and usage["completion_tokens"] > 0:
        record.output_tokens = usage["completion_tokens"]
        record.input_tokens = int(usage.get("prompt_tokens") or 0)
        record.usage_source = "usage"
    else:
        record.output_tokens = count_tokens("".join(state.text_parts))
        record.input_tokens = sum(count_tokens(_text_of(m)) for m in messages)
        record.usage_source = "counted"


def _fail(record: RequestRecord, kind: str, detail: str) -> None:
    record.error = kind
    record.error_detail = redact(detail)[:_DETAIL_CHARS]


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def _seconds(header: str | None) -> float | None:
    """A Retry-After header in seconds (the HTTP-date form is not used by these servers)."""
    try:
        return float(header) if header is not None else None
    except ValueError:
        return None


def _error_message(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    try:
        error = json.loads(text).get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (json.JSONDecodeError, AttributeError):
        pass
    return text.strip() or "(empty body)"
