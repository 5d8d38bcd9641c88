"""A streaming OpenAI-compatible chat server whose timings and failures are set by the caller.

It exists so that the load generator can be checked against known answers: the first
token leaves `ttft_ms` after the request arrived and every next one `itl_ms` later,
scheduled on absolute deadlines so that server-side overhead does not accumulate.
Per-request behaviour comes from an optional `"stub"` object in the request body
(`oss-serve bench --extra-body '{"stub": {...}}'`), see `StubBehaviour`.

Run: `python -m oss_serve.benchmarks.stub_server --port 8100 --ttft-ms 80 --itl-ms 20`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

# Each is one o200k token with its leading space, so a reply of n words is n tokens.
REPLY_WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog")


@dataclass(frozen=True)
class StubBehaviour:
    """How the server answers one request; defaults come from the command line."""

    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    default_max_tokens: int = 16
    reasoning_tokens: int = 0  # the first n output tokens go to `reasoning_content`
    fail_status: int = 0  # answer every `fail_every`-th request (0, k, 2k, ...) with this status
    fail_every: int = 1
    slow_every: int = 0  # every slow_every-th request (0, k, ...) waits slow_ttft_ms instead
    slow_ttft_ms: float = 0.0
    garbage: bool = False  # stream lines that are not JSON
    midstream_error: bool = False  # an error event after half of the tokens, then the end
    close_early: bool = False  # end the stream after half of the tokens without [DONE]
    omit_usage: bool = False  # never send a usage chunk, so the client must count tokens

    def merged(self, overrides: object) -> StubBehaviour:
        """This behaviour with the request's `stub` overrides applied (unknown keys refused)."""
        if overrides is None:
            return self
        if not isinstance(overrides, dict):
            raise ValueError("`stub` must be an object")
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown `stub` fields: {', '.join(unknown)}")
        return replace(self, **overrides)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status)


def _sse(payload: dict[str, Any] | str) -> bytes:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {body}\n\n".encode()


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Tokens of the message texts, counted the way the load generator counts them."""
    from oss_serve.common.vocab import o200k_harmony

    encoder = o200k_harmony()
    return sum(
        len(encoder.encode(str(message.get("content") or ""), disallowed_special=()))
        for message in messages
    )


@dataclass
class _Stream:
    """One streamed reply: chunk factory plus its schedule."""

    behaviour: StubBehaviour
    model: str
    completion_id: str
    max_tokens: int
    prompt_tokens: int
    tool_name: str | None
    include_usage: bool

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": self.completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def token_delta(self, index: int) -> dict[str, Any]:
        word = REPLY_WORDS[index % len(REPLY_WORDS)]
        if index < self.behaviour.reasoning_tokens:
            return {"reasoning_content": word}
        if self.tool_name is not None:
            call: dict[str, Any] = {"index": 0, "function": {"arguments": word}}
            if index == self.behaviour.reasoning_tokens:
                call.update(id=f"call_{self.completion_id}", type="function")
                call["function"]["name"] = self.tool_name
            return {"tool_calls": [call]}
        return {"content": word}

    async def events(self, arrived_s: float, ttft_s: float) -> AsyncIterator[bytes]:
        behaviour = self.behaviour
        yield self.chunk({"role": "assistant", "content": ""})
        cut = self.max_tokens // 2 if (behaviour.midstream_error or behaviour.close_early) else -1
        for index in range(self.max_tokens):
            deadline = arrived_s + ttft_s + index * behaviour.itl_ms / 1000.0
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            if index == cut and behaviour.midstream_error:
                yield _sse(
                    {"error": {"message": "stub mid-stream failure", "type": "server_error"}}
                )
                return
            if index == cut:
                return
            if behaviour.garbage:
                yield _sse("this is not json {")
                continue
            yield self.chunk(self.token_delta(index))
        finish = "tool_calls" if self.tool_name else "length"
        yield self.chunk({}, finish=finish)
        if self.include_usage and not behaviour.omit_usage:
            usage = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.max_tokens,
                "total_tokens": self.prompt_tokens + self.max_tokens,
            }
            yield _sse({"id": self.completion_id, "choices": [], "usage": usage})
        yield _sse("[DONE]")


def create_app(default: StubBehaviour, api_key: str | None = None) -> FastAPI:
    """The FastAPI app; `api_key` set means requests need `Authorization: Bearer <key>`."""
    from oss_serve.common.vocab import o200k_harmony

    o200k_harmony()  # load the tokenizer now, not inside the first request's schedule
    app = FastAPI(title="oss-serve stub server")
    counter = itertools.count()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "stub"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        arrived_s = time.perf_counter()
        index = next(counter)
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "missing or wrong API key", "authentication_error")
        try:
            body = json.loads(await request.body())
            behaviour = default.merged(body.get("stub"))
            messages = body["messages"]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            return _error(400, f"bad request body: {err}")
        if behaviour.fail_status and index % max(1, behaviour.fail_every) == 0:
            return _error(behaviour.fail_status, f"stub failure for request {index}", "stub_error")
        if body.get("stream") is not True:
            return _error(400, "the stub server only answers stream=true")
        slow = behaviour.slow_every and index % behaviour.slow_every == 0
        ttft_s = (behaviour.slow_ttft_ms if slow else behaviour.ttft_ms) / 1000.0
        tools = body.get("tools") or []
        stream = _Stream(
            behaviour=behaviour,
            model=str(body.get("model", "stub")),
            completion_id=f"chatcmpl-stub-{index}",
            max_tokens=int(
                body.get("max_completion_tokens")
                or body.get("max_tokens")
                or behaviour.default_max_tokens
            ),
            prompt_tokens=_prompt_tokens(messages),
            tool_name=tools[0]["function"]["name"] if tools else None,
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        )
        return StreamingResponse(stream.events(arrived_s, ttft_s), media_type="text/event-stream")

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--ttft-ms", type=float, default=StubBehaviour.ttft_ms)
    parser.add_argument("--itl-ms", type=float, default=StubBehaviour.itl_ms)
    parser.add_argument("--max-tokens", type=int, default=StubBehaviour.default_max_tokens)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    behaviour = StubBehaviour(
        ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, default_max_tokens=args.max_tokens
    )
    uvicorn.run(
        create_app(behaviour, args.api_key),
        host=args.host,
        port=args.port,
        log_level="warning",
        backlog=8192,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
