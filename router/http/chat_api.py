"""POST /v1/chat/completions: harmony render -> the shared pipeline -> parsed deltas as
OpenAI chat.completion objects or SSE chunks.

The extension field `server_tools` takes the Responses API's hosted tool entries
(`code_interpreter`, `web_search`, `mcp`): the server runs those calls in its tool loop and
the answer lists them in the message's `server_tool_calls` (in the Responses items' shapes;
streamed as a delta when each call finishes)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from oss_serve.common.vocab import STARTOFTEXT, o200k_harmony
from oss_serve.harmony import HarmonyRequestError
from oss_serve.harmony.server_tools import is_hosted_tool, server_tool_request
from oss_serve.protos import inference_pb2
from oss_serve.router.chat import ChatChunk, ChatOptions, HarmonyPlan, open_chat, plan_chat
from oss_serve.router.gate import Caller
from oss_serve.router.http import tool_items
from oss_serve.router.http.context import ApiContext
from oss_serve.router.http.errors import invalid
from oss_serve.router.http.models import ChatCompletionRequest, SamplingFields
from oss_serve.router.http.openai_json import chat_logprobs, chat_usage, new_id, sum_usage
from oss_serve.router.http.request_body import parse_body, read_json, sampling_params
from oss_serve.router.http.streaming import (
    DONE,
    merged,
    sse,
    streaming_response,
    unless_disconnected,
)
from oss_serve.router.pipeline import TokenChunk
from oss_serve.router.tool_loop import (
    MAX_TOOL_CALLS,
    LoopEvent,
    ToolCallFinished,
    ToolLoop,
    new_tool_session,
)
from oss_serve.router.tool_set import RequestTools, open_request_tools


@dataclass
class Choice:
    """One choice's generation: its stream, bookkeeping, and what it has produced so far."""

    index: int
    pending_logprobs: list[inference_pb2.TokenLogprob] = field(default_factory=list)
    reasoning: str = ""
    content: str = ""
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = ""
    usage: inference_pb2.Usage | None = None
    started: bool = False
    server_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_session: str = ""

    def add_server_call(self, event: LoopEvent) -> dict[str, Any] | None:
        """A finished server-side call as a Responses-shaped item (None for other events)."""
        if not isinstance(event, ToolCallFinished):
            return None
        item = tool_items.call_item(event, self.tool_session)
        if item is None:
            return None
        tool_items.finish_item(item, event)
        self.server_tool_calls.append(item)
        return item

    def on_tokens(self, chunk: TokenChunk) -> None:
        self.pending_logprobs += chunk.logprobs

    def absorb(self, chunk: ChatChunk, want_logprobs: bool) -> list[dict[str, Any]]:
        """Fold a parsed chunk in; returns its logprobs entries (content tokens)."""
        self.reasoning += chunk.reasoning
        self.content += chunk.content
        entries = []
        if want_logprobs and chunk.content:
            entries = chat_logprobs(content_tokens(self.pending_logprobs, chunk.content))
            self.logprobs += entries
        self.pending_logprobs = []
        for call in chunk.tool_calls:
            known = self.tool_calls.setdefault(
                call.index, {"id": call.id, "type": "function", "name": call.name, "arguments": ""}
            )
            known["arguments"] += call.arguments
        if chunk.finish_reason:
            reason = "length" if chunk.finish_reason == MAX_TOOL_CALLS else chunk.finish_reason
            self.finish_reason = "tool_calls" if self.tool_calls else reason
            self.usage = chunk.usage
        return entries


def content_tokens(
    entries: list[inference_pb2.TokenLogprob], content: str
) -> list[inference_pb2.TokenLogprob]:
    """The tokens (since the last parsed chunk) that carry `content`: content closes the
    chunk's text (headers and reasoning come before it), so take text tokens from the end
    until their bytes cover the content's."""
    needed = len(content.encode())
    picked: list[inference_pb2.TokenLogprob] = []
    for entry in reversed(entries):
        if needed <= 0:
            break
        if entry.token_id >= STARTOFTEXT:
            continue
        picked.append(entry)
        needed -= len(o200k_harmony().decode_single_token_bytes(entry.token_id))
    return picked[::-1]


@dataclass(frozen=True)
class ChatPlan:
    request: ChatCompletionRequest
    harmony: HarmonyPlan


async def create_chat_completion(request: Request, ctx: ApiContext) -> Response:
    caller = await ctx.authenticate(request)
    body = await read_json(request, ctx.max_body_bytes)
    parsed = parse_body(ChatCompletionRequest, body)
    top = parsed.top_logprobs if parsed.logprobs else None
    if parsed.logprobs and top is None:
        top = 0
    sampling = sampling_params(
        parsed, max_tokens=parsed.max_completion_tokens or parsed.max_tokens, logprobs=top
    )
    choices = [Choice(i) for i in range(parsed.n)]
    options = options_of(parsed, idempotency_key=request.headers.get("idempotency-key", ""))
    plan: ChatPlan
    streams: Sequence[AsyncIterator[LoopEvent]]
    if parsed.server_tools is None:
        plan = ChatPlan(parsed, plan_chat(body, sampling, ctx.pipeline.limits, n=parsed.n))
        streams = await open_chat(
            ctx.pipeline,
            caller,
            plan.harmony,
            options,
            n=parsed.n,
            on_tokens=[choice.on_tokens for choice in choices],
        )
    else:
        plan, stream = await _tool_loop(ctx, caller, body, parsed, sampling, options, choices[0])
        streams = [stream]
    completion_id = new_id("chatcmpl-")
    if parsed.stream:
        return await streaming_response(_sse_frames(plan, choices, streams, completion_id))
    result = await unless_disconnected(request, _collect(plan, choices, streams))
    return JSONResponse(_completion_json(plan, choices, completion_id, result))


async def _tool_loop(
    ctx: ApiContext,
    caller: Caller,
    body: dict[str, Any],
    parsed: ChatCompletionRequest,
    sampling: inference_pb2.SamplingParams,
    options: ChatOptions,
    choice: Choice,
) -> tuple[ChatPlan, AsyncIterator[LoopEvent]]:
    """The `server_tools` extension: one choice through the tool loop, in a fresh session."""
    if parsed.n != 1:
        raise invalid("n must be 1 when the request has server_tools", "n")
    try:
        for index, entry in enumerate(parsed.server_tools or ()):
            if not is_hosted_tool(entry):
                raise HarmonyRequestError(
                    f"server_tools[{index}].type",
                    f"{entry.get('type')!r} is not a server-side tool; use code_interpreter, "
                    "web_search or mcp (function tools go in `tools`)",
                )
        requested = server_tool_request(parsed.server_tools, "server_tools")
    except HarmonyRequestError as err:
        raise invalid(str(err), err.field) from err
    tools = await open_request_tools(ctx.tools, requested, new_tool_session())
    choice.tool_session = tools.session
    try:
        plan = ChatPlan(
            parsed,
            plan_chat(
                body,
                sampling,
                ctx.pipeline.limits,
                builtin_tools=tools.builtin_names,
                tool_namespaces=tools.namespaces,
            ),
        )
    except BaseException:
        await tools.aclose()
        raise
    max_tool_calls = ctx.max_tool_calls if parsed.max_tool_calls is None else parsed.max_tool_calls
    loop = ToolLoop(
        ctx.pipeline,
        caller,
        plan.harmony,
        options,
        tools,
        max_tool_calls=max_tool_calls,
        on_tokens=choice.on_tokens,
    )
    return plan, _ending_tools(loop.run(), tools, ctx)


async def _ending_tools(
    events: AsyncIterator[LoopEvent], tools: RequestTools, ctx: ApiContext
) -> AsyncIterator[LoopEvent]:
    """The loop's events; then the request's tools close (a chat has no chain to keep)."""
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await tools.aclose()
        if ctx.tool_sessions is not None:
            await ctx.tool_sessions.end(tools, keep=False)


def options_of(request: SamplingFields, *, idempotency_key: str = "") -> ChatOptions:
    """`idempotency_key` (the Idempotency-Key header): a retry with it replays the answer."""
    return ChatOptions(model=request.model, priority=request.priority, request_id=idempotency_key)


async def _collect(
    plan: ChatPlan, choices: list[Choice], streams: Sequence[AsyncIterator[LoopEvent]]
) -> inference_pb2.Usage:
    async for index, chunk in merged(streams):
        if isinstance(chunk, ChatChunk):
            choices[index].absorb(chunk, plan.request.logprobs)
        else:
            choices[index].add_server_call(chunk)
    return sum_usage(c.usage for c in choices if c.usage is not None)


def _completion_json(
    plan: ChatPlan, choices: list[Choice], completion_id: str, usage: inference_pb2.Usage
) -> dict[str, Any]:
    include_reasoning = plan.request.include_reasoning
    out = []
    for choice in choices:
        message: dict[str, Any] = {"role": "assistant", "content": choice.content or None}
        if include_reasoning and choice.reasoning:
            message["reasoning"] = message["reasoning_content"] = choice.reasoning
        if choice.tool_calls:
            message["tool_calls"] = [
                _tool_call(call) for _, call in sorted(choice.tool_calls.items())
            ]
        if choice.server_tool_calls:
            message["server_tool_calls"] = choice.server_tool_calls
        out.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": {"content": choice.logprobs} if plan.request.logprobs else None,
                "finish_reason": choice.finish_reason or "stop",
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.request.model or "default",
        "choices": out,
        "usage": chat_usage(usage),
    }


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": call["name"], "arguments": call["arguments"]},
    }


async def _sse_frames(
    plan: ChatPlan,
    choices: list[Choice],
    streams: Sequence[AsyncIterator[LoopEvent]],
    completion_id: str,
) -> AsyncIterator[bytes]:
    request = plan.request
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    created = int(time.time())
    model = request.model or "default"
    async for index, chunk in merged(streams):
        choice = choices[index]
        if isinstance(chunk, ChatChunk):
            entries = choice.absorb(chunk, request.logprobs)
            delta = _delta(chunk, choice, request.include_reasoning)
        else:
            item = choice.add_server_call(chunk)
            if item is None:
                continue
            entries, delta = [], {"server_tool_calls": [item]}
        frame: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": {"content": entries} if request.logprobs else None,
                    "finish_reason": choice.finish_reason or None,
                }
            ],
        }
        if include_usage:
            frame["usage"] = None
        yield sse(frame)
    if include_usage:
        usage = sum_usage(c.usage for c in choices if c.usage is not None)
        yield sse(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": chat_usage(usage),
            }
        )
    yield DONE


def _delta(chunk: ChatChunk, choice: Choice, include_reasoning: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if not choice.started:
        choice.started = True
        delta["role"] = "assistant"
    if chunk.reasoning and include_reasoning:
        delta["reasoning"] = delta["reasoning_content"] = chunk.reasoning
    if chunk.content:
        delta["content"] = chunk.content
    if chunk.tool_calls:
        calls = []
        for call in chunk.tool_calls:
            entry: dict[str, Any] = {"index": call.index, "function": {"arguments": call.arguments}}
            if call.id:
                entry.update(id=call.id, type="function")
                entry["function"]["name"] = call.name
            calls.append(entry)
        delta["tool_calls"] = calls
    return delta
